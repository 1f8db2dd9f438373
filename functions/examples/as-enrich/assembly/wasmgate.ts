// The wasmgate function ABI, version 1, for AssemblyScript
// (functions/abi/README.md): the host imports of module "wasmgate", the
// statuses and flags, and a reader of the event envelope (postcard).
//
// Everything works on raw linear memory (`usize` pointers, load/store):
// nothing here allocates, so the module runs with `--runtime stub` and keeps
// no garbage between warm invocations. AssemblyScript strings are UTF-16;
// `ascii()` below copies an ASCII literal into memory as bytes.

// ---- Host functions --------------------------------------------------------

@external("wasmgate", "event_read")
export declare function event_read(dst: usize, cap: i32): i32;
@external("wasmgate", "emit")
export declare function emit(topic: usize, topic_len: i32, payload: usize, payload_len: i32, flags: i32): i32;
@external("wasmgate", "log")
export declare function log(level: i32, msg: usize, msg_len: i32): void;
@external("wasmgate", "now_ms")
export declare function now_ms(): i64;
@external("wasmgate", "config_get")
export declare function config_get(key: usize, key_len: i32, dst: usize, cap: i32): i32;

// ---- Constants ---------------------------------------------------------------

export const OK: i32 = 0;
export const NOT_FOUND: i32 = -1;
export const INVALID_ARGUMENT: i32 = -2;
export const DENIED: i32 = -3;
export const NOT_A_NUMBER: i32 = -4;
export const UNAVAILABLE: i32 = -5;

export const LOG_ERROR: i32 = 0;
export const LOG_WARN: i32 = 1;
export const LOG_INFO: i32 = 2;

/** QoS 1 to the local broker. */
export const EMIT_LOCAL: i32 = 1;
/** QoS 1 upstream (bit 3), through the durable outbox. */
export const EMIT_UPSTREAM: i32 = 9;

export const EVENT_MQTT: u32 = 0;
export const EVENT_BATCH: u32 = 6;

// ---- Byte helpers ------------------------------------------------------------

/** Scratch for `ascii`: literals up to 256 characters. */
const ASCII: usize = memory.data(256);

/** An ASCII string literal as bytes in scratch memory (valid until the next call). */
export function ascii(s: string): usize {
  const n = s.length;
  for (let i = 0; i < n; i++) store<u8>(ASCII + <usize>i, <u8>s.charCodeAt(i));
  return ASCII;
}

/** Logs an ASCII literal. */
export function logText(level: i32, s: string): void {
  log(level, ascii(s), s.length);
}

/** Whether the `len` bytes at `ptr` are the ASCII literal `s`. */
export function bytesEq(ptr: usize, len: u32, s: string): bool {
  if (<i32>len != s.length) return false;
  for (let i: u32 = 0; i < len; i++) {
    if (load<u8>(ptr + <usize>i) != <u8>s.charCodeAt(i)) return false;
  }
  return true;
}

// ---- The envelope --------------------------------------------------------------
// A postcard reader over [at, end) kept in globals (no object, no
// allocation): reading past the end sets `failed`; `bytes()` leaves what it
// read in `ptr` and `len`.

let at: usize = 0;
let end: usize = 0;
export let failed: bool = false;
export let ptr: usize = 0;
export let len: u32 = 0;

function byte(): u8 {
  if (failed || at >= end) {
    failed = true;
    return 0;
  }
  const b = load<u8>(at);
  at++;
  return b;
}

function boolean(): bool {
  const b = byte();
  if (b > 1) failed = true;
  return b == 1;
}

/** Unsigned LEB128 (u32, u64). */
function varint(): u64 {
  let value: u64 = 0;
  for (let shift: u64 = 0; shift < 64; shift += 7) {
    const b = byte();
    if (failed) return 0;
    value |= (<u64>(b & 0x7f)) << shift;
    if ((b & 0x80) == 0) return value;
  }
  failed = true;
  return 0;
}

/** A `str` or `bytes` into `ptr`, `len` (pointing into the buffer, not copied). */
function bytes(): bool {
  const n = varint();
  if (failed || n > <u64>(end - at)) {
    failed = true;
    return false;
  }
  ptr = at;
  len = <u32>n;
  at += <usize>n;
  return true;
}

// The current MQTT message, set by `nextMqtt()`.
export let topic: usize = 0;
export let topic_len: u32 = 0;
export let payload: usize = 0;
export let payload_len: u32 = 0;
export let qos: u8 = 0;
export let retain: bool = false;

let batch: bool = false;
let single_done: bool = false;
let kind: u32 = 0;

/**
 * Starts on an envelope of `n` bytes at `buf`: decodes the context and the
 * event's kind. False if they do not decode.
 */
export function startEnvelope(buf: usize, n: u32): bool {
  at = buf;
  end = buf + <usize>n;
  failed = false;
  single_done = false;
  varint(); // request_id
  bytes(); // function
  bytes(); // version
  varint(); // attempt
  varint(); // deadline_ms
  kind = <u32>varint();
  batch = kind == EVENT_BATCH;
  if (batch && bytes()) {
    // Batch = Seq<Event>: the items back to back inside one `bytes`.
    at = ptr;
    end = ptr + <usize>len;
  }
  return !failed;
}

/**
 * The next MQTT message of the envelope into `topic`, `payload`...: the one
 * message, or a batch's items in order (like the Rust SDK's `events()`).
 * False at the end; `failed` if an event is not MQTT or does not decode.
 */
export function nextMqtt(): bool {
  if (failed) return false;
  if (!batch) {
    if (single_done) return false;
    single_done = true;
    if (kind != EVENT_MQTT) {
      failed = true;
      return false;
    }
  } else {
    if (at >= end) return false;
    if (varint() != <u64>EVENT_MQTT) {
      failed = true;
      return false;
    }
  }
  bytes();
  topic = ptr;
  topic_len = len;
  bytes();
  payload = ptr;
  payload_len = len;
  qos = byte();
  retain = boolean();
  bytes(); // user_properties (a Seq<Pair>, not used here)
  return !failed;
}
