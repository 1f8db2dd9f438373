//! Guests written in WAT for the end-to-end tests: a handler of MQTT
//! events that decodes its envelope (postcard, functions/abi/README.md)
//! and runs a test's own `body`, with the locals `$attempt`, `$payload`
//! and `$payload_len` set. The envelope is read to 0..60000; data a test
//! adds goes above that.

/// `imports`: host functions beside `event_read` (`(import "wasmgate" ...)`);
/// `definitions`: data segments and helper functions; `body`: the
/// handler's rest, which returns its result (an `i32`).
pub fn mqtt_guest(imports: &str, definitions: &str, body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
  (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
  {imports}
  (memory (export "memory") 1)
  (global $pos (mut i32) (i32.const 0))
  (func (export "wasmgate_abi_version") (result i32) (i32.const 1))
  {definitions}

  ;; Unsigned LEB128 at $pos; advances $pos.
  (func $varint (result i64)
    (local $result i64) (local $shift i64) (local $byte i32)
    (loop $more
      (local.set $byte (i32.load8_u (global.get $pos)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      (local.set $result
        (i64.or (local.get $result)
          (i64.shl (i64.extend_i32_u (i32.and (local.get $byte) (i32.const 0x7f)))
                   (local.get $shift))))
      (local.set $shift (i64.add (local.get $shift) (i64.const 7)))
      (br_if $more (i32.and (local.get $byte) (i32.const 0x80))))
    (local.get $result))

  ;; A length, then that many bytes. (The length is read before $pos is:
  ;; operands evaluate in order.)
  (func $skip_bytes
    (local $len i32)
    (local.set $len (i32.wrap_i64 (call $varint)))
    (global.set $pos (i32.add (global.get $pos) (local.get $len))))

  (func (export "wasmgate_handle") (param $len i32) (result i32)
    (local $attempt i32) (local $payload i32) (local $payload_len i32)
    (drop (call $event_read (i32.const 0) (i32.const 60000)))
    (global.set $pos (i32.const 0))
    (drop (call $varint))                          ;; context.request_id
    (call $skip_bytes)                             ;; context.function
    (call $skip_bytes)                             ;; context.version
    (local.set $attempt (i32.wrap_i64 (call $varint)))
    (drop (call $varint))                          ;; context.deadline_ms
    (drop (call $varint))                          ;; Event::Mqtt
    (call $skip_bytes)                             ;; topic
    (local.set $payload_len (i32.wrap_i64 (call $varint)))
    (local.set $payload (global.get $pos))
    {body})
)"#
    );
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("guest WAT: {e}\n{wat}"))
}
