//! Why a function failed.

use crate::line::LogLine;
use core::fmt;
use wasmgate_abi::Status;

/// What `wasmgate_handle` returns for failures the SDK itself detects; a
/// function's own errors return their [`Error::User`] code. The host treats
/// every non-zero value the same (the invocation's effects are discarded);
/// the number is there for the log.
pub mod codes {
    /// An [`Error::User`] with code `0` (which would mean success) returns this.
    pub const USER_DEFAULT: i32 = 1;
    /// A value did not fit the buffer given for it ([`super::Error::BufferTooSmall`]).
    pub const BUFFER_TOO_SMALL: i32 = 100;
    /// The event is bigger than the module's event buffer.
    pub const EVENT_TOO_BIG: i32 = 101;
    /// The envelope (or an event inside a batch) does not decode.
    pub const BAD_ENVELOPE: i32 = 102;
}

/// A function's error. `?` works on every [`crate::Ctx`] call; return your own
/// with [`Error::msg`] or [`Error::user`]. The exported `wasmgate_handle` logs
/// it at error level and returns [`Error::code`], so the invocation fails and
/// nothing it did is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A host call returned a status the function did not handle.
    Host {
        /// The import, e.g. `"emit"`.
        call: &'static str,
        /// The negative status code; see [`Error::status`].
        code: i32,
    },
    /// A copy-out value (KV, config) was bigger than the buffer given for it.
    BufferTooSmall {
        call: &'static str,
        needed: usize,
        capacity: usize,
    },
    /// The event could not be decoded (a host/SDK version mismatch).
    BadEnvelope,
    /// The function's own failure.
    User { code: i32, message: &'static str },
}

impl Error {
    /// A failure of the function itself, returned as code `1`.
    pub const fn msg(message: &'static str) -> Self {
        Error::User {
            code: codes::USER_DEFAULT,
            message,
        }
    }

    /// A failure of the function itself with a code of its choosing (`0` becomes `1`).
    pub const fn user(code: i32, message: &'static str) -> Self {
        Error::User { code, message }
    }

    /// The host status behind a [`Error::Host`] error, if it is a known one.
    pub const fn status(&self) -> Option<Status> {
        match self {
            Error::Host { code, .. } => Status::from_code(*code),
            _ => None,
        }
    }

    /// What `wasmgate_handle` returns for this error; never `0`.
    pub const fn code(&self) -> i32 {
        match *self {
            Error::Host { code, .. } if code != 0 => code,
            Error::Host { .. } => codes::USER_DEFAULT,
            Error::BufferTooSmall { .. } => codes::BUFFER_TOO_SMALL,
            Error::BadEnvelope => codes::BAD_ENVELOPE,
            Error::User { code: 0, .. } => codes::USER_DEFAULT,
            Error::User { code, .. } => code,
        }
    }

    /// Writes the error as one line without `core::fmt`, which keeps the
    /// export glue small; `Display` prints the same text.
    pub fn write_to(&self, line: &mut LogLine) {
        match *self {
            Error::Host { call, code } => {
                line.push_str(call);
                line.push_str(" failed: ");
                line.push_str(status_text(code));
                line.push_str(" (");
                line.push_int(code.into());
                line.push_str(")");
            }
            Error::BufferTooSmall {
                call,
                needed,
                capacity,
            } => {
                line.push_str(call);
                line.push_str(": value of ");
                line.push_int(needed as i64);
                line.push_str(" bytes does not fit a buffer of ");
                line.push_int(capacity as i64);
            }
            Error::BadEnvelope => line.push_str("the event envelope does not decode"),
            Error::User { code, message } => {
                line.push_str(message);
                line.push_str(" (code ");
                line.push_int(code.into());
                line.push_str(")");
            }
        }
    }
}

fn status_text(code: i32) -> &'static str {
    match Status::from_code(code) {
        Some(Status::Ok) => "ok",
        Some(Status::NotFound) => "not found",
        Some(Status::InvalidArgument) => "invalid argument",
        Some(Status::Denied) => "denied",
        Some(Status::NotANumber) => "not a number",
        Some(Status::Unavailable) => "unavailable",
        None => "unknown status",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = LogLine::new();
        self.write_to(&mut line);
        f.write_str(line.as_str())
    }
}

impl core::error::Error for Error {}

/// Maps a host call's return value: a length (or `0`) on success.
pub(crate) fn check(call: &'static str, ret: i32) -> Result<usize, Error> {
    if ret >= 0 {
        Ok(ret as usize)
    } else {
        Err(Error::Host { call, code: ret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn host_errors_name_the_call_and_the_status() {
        let err = Error::Host {
            call: "emit",
            code: Status::Denied.code(),
        };
        assert_eq!(err.to_string(), "emit failed: denied (-3)");
        assert_eq!(err.status(), Some(Status::Denied));
    }

    #[test]
    fn every_error_returns_a_non_zero_code() {
        for err in [
            Error::user(0, "zero"),
            Error::msg("plain"),
            Error::Host {
                call: "kv_get",
                code: 0,
            },
            Error::BadEnvelope,
            Error::BufferTooSmall {
                call: "kv_get",
                needed: 10,
                capacity: 8,
            },
        ] {
            assert_ne!(err.code(), 0, "{err}");
        }
        assert_eq!(Error::user(42, "mine").code(), 42);
    }

    #[test]
    fn too_small_buffers_say_how_much_was_needed() {
        let err = Error::BufferTooSmall {
            call: "config_get",
            needed: 300,
            capacity: 64,
        };
        assert_eq!(
            err.to_string(),
            "config_get: value of 300 bytes does not fit a buffer of 64"
        );
    }
}
