//! Write a wasmgate function as a plain Rust function.
//!
//! ```
//! use wasmgate_sdk::{Ctx, Error, Event};
//!
//! fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
//!     let Event::Mqtt(msg) = event else {
//!         return Err(Error::msg("expected an MQTT message"));
//!     };
//!     let seen = ctx.kv_increment("seen", 1)?;
//!     wasmgate_sdk::info!(ctx, "message {} on {}", seen, msg.topic);
//!     ctx.emit("echo", msg.payload)
//! }
//!
//! wasmgate_sdk::export!(handle);
//! ```
//!
//! `export!` writes the Wasm exports of the [ABI](wasmgate_abi) only when
//! compiling for `wasm32`; everywhere else the same function runs against
//! [`testing::FakeHost`], so it unit-tests with plain `cargo test`:
//!
//! ```
//! # use wasmgate_sdk::{Ctx, Error, Event};
//! # fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
//! #     let Event::Mqtt(msg) = event else { return Err(Error::msg("not mqtt")) };
//! #     ctx.emit("echo", msg.payload)
//! # }
//! use wasmgate_sdk::testing::{mqtt, FakeHost};
//!
//! let mut host = FakeHost::new();
//! host.call(handle, &mqtt("sensors/1", "21.5")).unwrap();
//! assert_eq!(host.emits()[0].payload, b"21.5");
//! ```
//!
//! The crate is `no_std` and needs no allocator on `wasm32`.
#![no_std]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod ctx;
mod error;
mod events;
mod glue;
mod host;
pub mod json;
mod line;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use ctx::Ctx;
pub use error::{codes, Error};
pub use events::{events, Events};
pub use glue::run;
pub use host::{DefaultHost, Host};
pub use line::{decimal, LogLine};

/// The ABI crate, for everything not re-exported below.
pub use wasmgate_abi as abi;
pub use wasmgate_abi::{
    Context, Destination, EmitOptions, Envelope, Event, FileArrival, HttpRequest, InvokeRequest,
    KvChange, KvOp, LogLevel, MetricKind, MqttMessage, Pair, ScheduleTick, Seq, Status,
    WebSocketEvent, WebSocketKind,
};

/// The event buffer [`export!`] uses unless told otherwise: 64 KiB.
pub const DEFAULT_EVENT_BUFFER: usize = 64 * 1024;

/// Exports a handler as the module's `wasmgate_handle` (on `wasm32` only).
///
/// ```ignore
/// wasmgate_sdk::export!(handle);
/// // Events bigger than the default 64 KiB buffer fail the invocation, with a
/// // log line saying so. For bigger ones:
/// wasmgate_sdk::export!(handle, event_buffer = 1_048_576);
/// ```
///
/// The handler is `fn(&Event<'_>, &mut Ctx<'_>) -> Result<(), Error>`. Its
/// type is checked on every target, so a mistake shows up in `cargo test` too.
#[macro_export]
macro_rules! export {
    ($handler:path $(,)?) => {
        $crate::export!($handler, event_buffer = $crate::DEFAULT_EVENT_BUFFER);
    };
    ($handler:path, event_buffer = $size:expr $(,)?) => {
        const _: $crate::__private::Handler = $handler;

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static EVENT_BUFFER: $crate::__private::EventBuffer<{ $size }> =
                $crate::__private::EventBuffer::new();

            // `no_mangle` counts as unsafe code: it is how the host finds these.
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn wasmgate_abi_version() -> i32 {
                $crate::__private::ABI_VERSION
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn wasmgate_abi_revision() -> i32 {
                $crate::__private::ABI_REVISION
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn wasmgate_handle(event_len: i32) -> i32 {
                $crate::__private::handle(&EVENT_BUFFER, event_len, $handler)
            }
        };
    };
}

/// Logs a formatted line at error level: `error!(ctx, "bad {}", x)`.
///
/// Lines longer than [`LogLine::CAPACITY`] are cut. Formatting pulls in
/// `core::fmt`, a few KB of Wasm; [`Ctx::log`] with a plain `&str` does not.
#[macro_export]
macro_rules! error {
    ($ctx:expr, $($arg:tt)+) => { $crate::__log!($ctx, $crate::LogLevel::Error, $($arg)+) };
}

/// Logs a formatted line at warn level; see [`error!`].
#[macro_export]
macro_rules! warn {
    ($ctx:expr, $($arg:tt)+) => { $crate::__log!($ctx, $crate::LogLevel::Warn, $($arg)+) };
}

/// Logs a formatted line at info level; see [`error!`].
#[macro_export]
macro_rules! info {
    ($ctx:expr, $($arg:tt)+) => { $crate::__log!($ctx, $crate::LogLevel::Info, $($arg)+) };
}

/// Logs a formatted line at debug level; see [`error!`].
#[macro_export]
macro_rules! debug {
    ($ctx:expr, $($arg:tt)+) => { $crate::__log!($ctx, $crate::LogLevel::Debug, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($ctx:expr, $level:expr, $($arg:tt)+) => {{
        let mut line = $crate::LogLine::new();
        // A `LogLine` never fails a write: it cuts instead.
        let _ = ::core::fmt::Write::write_fmt(&mut line, ::core::format_args!($($arg)+));
        $ctx.log($level, line.as_str());
    }};
}

/// Used by the macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    /// What [`export!`] accepts.
    pub type Handler =
        for<'e, 'c> fn(&crate::Event<'e>, &mut crate::Ctx<'c>) -> Result<(), crate::Error>;

    pub const ABI_VERSION: i32 = wasmgate_abi::ABI_VERSION as i32;
    pub const ABI_REVISION: i32 = wasmgate_abi::ABI_REVISION as i32;

    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::{handle, EventBuffer};
}
