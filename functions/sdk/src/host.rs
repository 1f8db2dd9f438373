//! The host functions of the ABI, one trait method each.
//!
//! The methods mirror the imports of module `wasmgate` one to one, raw status
//! codes and copy-out rule included, so that [`crate::Ctx`] runs the same code
//! against the real host on `wasm32` and against [`crate::testing::FakeHost`]
//! in native tests.

use wasmgate_abi::{LogLevel, MetricKind};

/// The host a [`crate::Ctx`] talks to. Return values are as in the ABI README:
/// a length or `0` on success, a negative [`wasmgate_abi::Status`] code otherwise.
pub trait Host {
    /// Copy-out: copies the current envelope into `dst` if it fits; returns its length.
    fn event_read(&mut self, dst: &mut [u8]) -> i32;
    /// `flags` as built by [`wasmgate_abi::EmitOptions::to_flags`].
    fn emit(&mut self, topic: &str, payload: &[u8], flags: i32) -> i32;
    /// Copy-out: copies the value into `dst` if it fits; returns its length.
    fn kv_get(&mut self, key: &str, dst: &mut [u8]) -> i32;
    fn kv_put(&mut self, key: &str, value: &[u8]) -> i32;
    fn kv_delete(&mut self, key: &str) -> i32;
    /// Writes the new value to `dst` as 8 bytes little-endian.
    fn kv_increment(&mut self, key: &str, delta: i64, dst: &mut [u8; 8]) -> i32;
    fn log(&mut self, level: LogLevel, msg: &str);
    fn now_ms(&mut self) -> i64;
    /// Copy-out: copies the value into `dst` if it fits; returns its length.
    fn config_get(&mut self, key: &str, dst: &mut [u8]) -> i32;
    /// Copy-out, like `config_get`, for a secret the grants name.
    fn secret_get(&mut self, name: &str, dst: &mut [u8]) -> i32;
    fn invoke(&mut self, function: &str, payload: &[u8]) -> i32;
    fn respond(&mut self, status: i32, body: &[u8]) -> i32;
    fn respond_header(&mut self, name: &str, value: &str) -> i32;
    fn item_failed(&mut self, index: i32) -> i32;
    fn post_to_connection(&mut self, connection: &str, data: &[u8]) -> i32;
    fn metric(&mut self, name: &str, kind: MetricKind, value: f64) -> i32;
}

/// The host a plain `Ctx<'_>` uses: the real imports on `wasm32`, the fake elsewhere.
#[cfg(target_arch = "wasm32")]
pub type DefaultHost = crate::wasm::WasmHost;

/// The host a plain `Ctx<'_>` uses: the real imports on `wasm32`, the fake elsewhere.
#[cfg(not(target_arch = "wasm32"))]
pub type DefaultHost = crate::testing::FakeHost;
