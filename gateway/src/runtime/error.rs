//! Everything that can go wrong loading or running a function, by kind, so
//! that retries, metrics and operators can tell a bug from a budget.

use std::time::Duration;

/// A module could not be deployed. Names the function so that a config with
/// many functions points at the right one.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("function {function}: cannot read {path}: {error}")]
    Read {
        function: String,
        path: String,
        error: std::io::Error,
    },
    #[error("function {function}: not a valid WebAssembly module: {message}")]
    InvalidModule { function: String, message: String },
    #[error("function {function} (version {version}): missing export `{export}` (a {kind}); see functions/abi/README.md")]
    MissingExport {
        function: String,
        version: String,
        export: &'static str,
        kind: &'static str,
    },
    #[error("function {function} (version {version}): imports `{module}::{name}`, which wasmgate does not provide (only `wasmgate::*` host functions and WASI preview 1's `wasi_snapshot_preview1::*` exist)")]
    UnknownImport {
        function: String,
        version: String,
        module: String,
        name: String,
    },
    #[error("function {function} (version {version}): built for ABI version {found}, this gateway speaks version {expected}; rebuild it against a matching wasmgate-sdk")]
    AbiVersionMismatch {
        function: String,
        version: String,
        found: i64,
        expected: u32,
    },
    #[error("function {function} (version {version}): refused: {reason}")]
    OverLimit {
        function: String,
        version: String,
        reason: String,
    },
    #[error("function {function} (version {version}): cannot instantiate: {source}")]
    Instantiate {
        function: String,
        version: String,
        source: Box<InvokeError>,
    },
}

/// How a guest broke the host/guest contract. Never retried: it is a bug in
/// the function and would fail the same way again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiViolation {
    #[error("{call}: region at {ptr} of {len} bytes is outside the {memory_len}-byte memory")]
    OutOfBounds {
        call: &'static str,
        ptr: u32,
        len: u32,
        memory_len: usize,
    },
    #[error("{call}: {what} of {len} bytes is over the limit of {limit}")]
    TooLarge {
        call: &'static str,
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{call}: more than {limit} per invocation")]
    TooMany { call: &'static str, limit: usize },
    #[error("the module exports no memory named `memory`")]
    NoMemory,
    #[error("{call}: host calls are not allowed during the start function (it runs before the instance is ready; do that work in `wasmgate_handle`)")]
    HostCallInStart { call: &'static str },
}

/// Why one invocation failed. Every variant means its effects were discarded.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("function {function} (version {version}) trapped: {message}")]
    Trap {
        function: String,
        version: String,
        message: String,
    },
    #[error("function {function} (version {version}) ran out of fuel ({fuel} units)")]
    OutOfFuel {
        function: String,
        version: String,
        fuel: u64,
    },
    #[error(
        "function {function} (version {version}) went over its memory limit of {limit_bytes} bytes"
    )]
    MemoryLimit {
        function: String,
        version: String,
        limit_bytes: usize,
    },
    #[error("function {function} (version {version}) ran past its {timeout:?} deadline")]
    Deadline {
        function: String,
        version: String,
        timeout: Duration,
    },
    #[error("function {function} (version {version}) broke the ABI: {violation}")]
    Abi {
        function: String,
        version: String,
        violation: AbiViolation,
    },
    #[error("function {function} (version {version}): the gateway could not serve a host call: {message}")]
    Host {
        function: String,
        version: String,
        message: String,
    },
    #[error("function {function} (version {version}) returned error code {code}")]
    Failed {
        function: String,
        version: String,
        code: i32,
    },
    #[error("function {function} (version {version}) exited with code {code} (WASI proc_exit)")]
    Exited {
        function: String,
        version: String,
        code: i32,
    },
}

impl InvokeError {
    /// A short stable name for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        self.failure().as_str()
    }

    /// The kind of failure, which a retry policy decides on.
    pub fn failure(&self) -> FailureKind {
        match self {
            InvokeError::Trap { .. } => FailureKind::Trap,
            InvokeError::OutOfFuel { .. } => FailureKind::OutOfFuel,
            InvokeError::MemoryLimit { .. } => FailureKind::MemoryLimit,
            InvokeError::Deadline { .. } => FailureKind::Deadline,
            InvokeError::Abi { .. } => FailureKind::Abi,
            InvokeError::Host { .. } => FailureKind::Host,
            InvokeError::Failed { .. } | InvokeError::Exited { .. } => FailureKind::Failed,
        }
    }
}

/// The kinds of [`InvokeError`], by the names the config's
/// `retry.retry_on` and dead letters use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The guest trapped (`unreachable`, a Rust panic, a bad memory access).
    Trap,
    /// It used up its fuel: an endless loop, or too much work for one event.
    OutOfFuel,
    /// It grew its memory past the limit.
    MemoryLimit,
    /// It ran past its wall-clock timeout (`"timeout"` is accepted too).
    #[serde(alias = "timeout")]
    Deadline,
    /// It broke the host/guest contract: a bug that fails the same way again.
    Abi,
    /// The gateway could not serve one of its host calls (a database error).
    Host,
    /// It returned a non-zero code: the function itself reported failure.
    Failed,
}

impl FailureKind {
    pub const ALL: [FailureKind; 7] = [
        FailureKind::Trap,
        FailureKind::OutOfFuel,
        FailureKind::MemoryLimit,
        FailureKind::Deadline,
        FailureKind::Abi,
        FailureKind::Host,
        FailureKind::Failed,
    ];

    /// The kind of this name (as [`FailureKind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<FailureKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::Deadline => "deadline",
            FailureKind::Abi => "abi",
            FailureKind::Host => "host",
            FailureKind::Failed => "failed",
        }
    }
}
