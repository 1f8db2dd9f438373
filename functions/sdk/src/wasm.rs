//! The real host: the imports of module `wasmgate`, on `wasm32` only.
//!
//! This is the only place with unsafe code in the SDK: calling imports (the
//! host checks every region it is given, so a wrong length is a contract
//! violation that ends the invocation, not memory corruption) and handing out
//! the static event buffer.
#![allow(unsafe_code)]

use crate::ctx::Ctx;
use crate::error::Error;
use crate::host::Host;
use core::cell::{Cell, UnsafeCell};
use wasmgate_abi::{Event, LogLevel};

mod imports {
    // Pointers are `i32` offsets on wasm32, so these match the ABI's `i32`s.
    #[link(wasm_import_module = "wasmgate")]
    extern "C" {
        pub fn event_read(dst: *mut u8, cap: i32) -> i32;
        pub fn emit(
            topic: *const u8,
            topic_len: i32,
            payload: *const u8,
            payload_len: i32,
            flags: i32,
        ) -> i32;
        pub fn kv_get(key: *const u8, key_len: i32, dst: *mut u8, cap: i32) -> i32;
        pub fn kv_put(key: *const u8, key_len: i32, value: *const u8, value_len: i32) -> i32;
        pub fn kv_delete(key: *const u8, key_len: i32) -> i32;
        pub fn kv_increment(key: *const u8, key_len: i32, delta: i64, dst: *mut u8) -> i32;
        pub fn log(level: i32, msg: *const u8, msg_len: i32);
        pub fn now_ms() -> i64;
        pub fn config_get(key: *const u8, key_len: i32, dst: *mut u8, cap: i32) -> i32;
        pub fn secret_get(name: *const u8, name_len: i32, dst: *mut u8, cap: i32) -> i32;
        pub fn invoke(
            function: *const u8,
            function_len: i32,
            payload: *const u8,
            payload_len: i32,
        ) -> i32;
        pub fn respond(status: i32, body: *const u8, body_len: i32) -> i32;
        pub fn respond_header(
            name: *const u8,
            name_len: i32,
            value: *const u8,
            value_len: i32,
        ) -> i32;
        pub fn item_failed(index: i32) -> i32;
        pub fn post_to_connection(
            connection: *const u8,
            connection_len: i32,
            data: *const u8,
            data_len: i32,
        ) -> i32;
        pub fn metric(name: *const u8, name_len: i32, kind: i32, value: f64) -> i32;
    }
}

/// A slice's length as the ABI's `i32`. Nothing in a 32-bit memory is longer
/// than `i32::MAX` in practice; saturating keeps an absurd length a host-side
/// contract violation instead of a wrapped, negative one.
fn len(bytes: &[u8]) -> i32 {
    i32::try_from(bytes.len()).unwrap_or(i32::MAX)
}

/// The imports of module `wasmgate`. Zero-sized: `Ctx` over it is just calls.
#[derive(Debug, Default)]
pub struct WasmHost;

// SAFETY (all methods): every pointer/length pair comes from a live Rust slice
// or array, so it names memory this module owns for the duration of the call;
// the host copies out of or into exactly that region and keeps no reference.
impl Host for WasmHost {
    fn event_read(&mut self, dst: &mut [u8]) -> i32 {
        unsafe { imports::event_read(dst.as_mut_ptr(), len(dst)) }
    }
    fn emit(&mut self, topic: &str, payload: &[u8], flags: i32) -> i32 {
        let t = topic.as_bytes();
        unsafe { imports::emit(t.as_ptr(), len(t), payload.as_ptr(), len(payload), flags) }
    }
    fn kv_get(&mut self, key: &str, dst: &mut [u8]) -> i32 {
        let k = key.as_bytes();
        unsafe { imports::kv_get(k.as_ptr(), len(k), dst.as_mut_ptr(), len(dst)) }
    }
    fn kv_put(&mut self, key: &str, value: &[u8]) -> i32 {
        let k = key.as_bytes();
        unsafe { imports::kv_put(k.as_ptr(), len(k), value.as_ptr(), len(value)) }
    }
    fn kv_delete(&mut self, key: &str) -> i32 {
        let k = key.as_bytes();
        unsafe { imports::kv_delete(k.as_ptr(), len(k)) }
    }
    fn kv_increment(&mut self, key: &str, delta: i64, dst: &mut [u8; 8]) -> i32 {
        let k = key.as_bytes();
        unsafe { imports::kv_increment(k.as_ptr(), len(k), delta, dst.as_mut_ptr()) }
    }
    fn log(&mut self, level: LogLevel, msg: &str) {
        let m = msg.as_bytes();
        unsafe { imports::log(level as i32, m.as_ptr(), len(m)) }
    }
    fn now_ms(&mut self) -> i64 {
        unsafe { imports::now_ms() }
    }
    fn config_get(&mut self, key: &str, dst: &mut [u8]) -> i32 {
        let k = key.as_bytes();
        unsafe { imports::config_get(k.as_ptr(), len(k), dst.as_mut_ptr(), len(dst)) }
    }
    fn secret_get(&mut self, name: &str, dst: &mut [u8]) -> i32 {
        let n = name.as_bytes();
        unsafe { imports::secret_get(n.as_ptr(), len(n), dst.as_mut_ptr(), len(dst)) }
    }
    fn invoke(&mut self, function: &str, payload: &[u8]) -> i32 {
        let f = function.as_bytes();
        unsafe { imports::invoke(f.as_ptr(), len(f), payload.as_ptr(), len(payload)) }
    }
    fn respond(&mut self, status: i32, body: &[u8]) -> i32 {
        unsafe { imports::respond(status, body.as_ptr(), len(body)) }
    }
    fn respond_header(&mut self, name: &str, value: &str) -> i32 {
        let (n, v) = (name.as_bytes(), value.as_bytes());
        unsafe { imports::respond_header(n.as_ptr(), len(n), v.as_ptr(), len(v)) }
    }
    fn item_failed(&mut self, index: i32) -> i32 {
        unsafe { imports::item_failed(index) }
    }
    fn metric(&mut self, name: &str, kind: wasmgate_abi::MetricKind, value: f64) -> i32 {
        let n = name.as_bytes();
        unsafe { imports::metric(n.as_ptr(), len(n), kind.code(), value) }
    }
    fn post_to_connection(&mut self, connection: &str, data: &[u8]) -> i32 {
        let c = connection.as_bytes();
        unsafe { imports::post_to_connection(c.as_ptr(), len(c), data.as_ptr(), len(data)) }
    }
}

/// The static buffer `export!` reads each event into. It lives in `.bss`
/// (zeroed memory, not bytes in the `.wasm` file).
pub struct EventBuffer<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    in_use: Cell<bool>,
}

// SAFETY: without the `atomics` target feature a wasm32 module has exactly one
// thread, so no two threads can reach the buffer; `in_use` rules out the one
// remaining way to alias it (a re-entrant call).
#[cfg(not(target_feature = "atomics"))]
unsafe impl<const N: usize> Sync for EventBuffer<N> {}

impl<const N: usize> core::fmt::Debug for EventBuffer<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "EventBuffer({N} bytes)")
    }
}

impl<const N: usize> EventBuffer<N> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        EventBuffer {
            bytes: UnsafeCell::new([0; N]),
            in_use: Cell::new(false),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if self.in_use.replace(true) {
            return None;
        }
        // SAFETY: `in_use` was false, so no other `&mut` to the buffer exists
        // until we clear it below (a panic traps and the instance is dropped).
        let bytes = unsafe { &mut *self.bytes.get() };
        let out = f(bytes);
        self.in_use.set(false);
        Some(out)
    }
}

/// The body of `wasmgate_handle`.
pub fn handle<const N: usize>(
    buffer: &'static EventBuffer<N>,
    event_len: i32,
    handler: impl for<'e, 'c> FnOnce(&Event<'e>, &mut Ctx<'c, WasmHost>) -> Result<(), Error>,
) -> i32 {
    buffer
        .with(|buf| crate::glue::run(&mut WasmHost, buf, event_len, handler))
        .unwrap_or(crate::codes::EVENT_TOO_BIG)
}

#[cfg(feature = "panic-handler")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // A trap: the host discards the invocation and the instance.
    core::arch::wasm32::unreachable()
}
