//! A WASI preview 1 subset (`wasi_snapshot_preview1`), so that modules
//! built by standard toolchains for `wasm32-wasip1` (clang with wasi-libc,
//! Zig, TinyGo, Rust's `wasm32-wasip1`) run as functions without a custom
//! libc: `printf` becomes a log line, `time()` and `rand()` work, `getenv`
//! reads the function's `config`.
//!
//! What a function on a gateway may have: stdout and stderr (each line a
//! log line, info and warn), stdin at its end, the clocks, random bytes,
//! the function's `config` as its environment, its name as `argv[0]`, and
//! `proc_exit` (0 ends the invocation as a success, anything else as a
//! failure with that code). Every other call of the preview is linked, so a
//! module importing it deploys, and answers `EBADF` (no file descriptor but
//! the three exist: no preopened directory, no socket) or `ENOSYS`: nothing
//! reaches the host's files or network. Each call costs fuel as the
//! gateway's own calls do, and runs under the same deadline.
//!
//! Our own subset rather than wasmi's WASI crate: that one is wasi-common
//! over cap-std, a real filesystem and clocks for a command-line program,
//! which is a few hundred kilobytes of binary for calls a function must not
//! make here.

use super::host::{
    abort, charge_bytes, charge_fuel, enter_wasi, guest_region, read, HostResult, HostState,
};
use wasmgate_abi::LogLevel;
use wasmi::{Caller, Linker};

/// The import module of WASI preview 1.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// WASI's errno values that this subset answers.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const SPIPE: i32 = 70;
}

/// Every function of the preview, linked: what `check_imports` accepts.
pub const NAMES: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "random_get",
    "sched_yield",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// iovecs one `fd_write` or `fd_read` takes, at most (POSIX's IOV_MAX).
const MAX_IOVS: u32 = 1_024;

/// A call that answers `errno` for any arguments, after its fuel.
macro_rules! refuse {
    ($linker:ident, $name:literal, $errno:expr, ($($t:ty),*)) => {
        $linker.func_wrap(MODULE, $name, |mut caller: Caller<'_, HostState>, $(_: $t),*| -> HostResult<i32> {
            enter_wasi(&mut caller, $name)?;
            Ok($errno)
        })?;
    };
}

/// A call on a file descriptor: the three standard ones are not files
/// (`stdio`), any other does not exist.
macro_rules! on_fd {
    ($linker:ident, $name:literal, $stdio:expr, ($($t:ty),*)) => {
        $linker.func_wrap(MODULE, $name, |mut caller: Caller<'_, HostState>, fd: i32, $(_: $t),*| -> HostResult<i32> {
            enter_wasi(&mut caller, $name)?;
            Ok(if (0..=2).contains(&fd) { $stdio } else { errno::BADF })
        })?;
    };
}

/// Registers the subset under [`MODULE`].
pub(crate) fn define(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, HostState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         written: i32|
         -> HostResult<i32> {
            enter_wasi(&mut caller, "fd_write")?;
            let stream = match fd {
                1 => 0,
                2 => 1,
                _ => return Ok(errno::BADF),
            };
            let Some(buffers) = iovecs(&mut caller, "fd_write", iovs, iovs_len)? else {
                return Ok(errno::INVAL);
            };
            let mut total: u32 = 0;
            for (ptr, len) in buffers {
                let bytes = read(&mut caller, "fd_write", ptr as i32, len as i32)?;
                total = total.saturating_add(len);
                write_stdio(caller.data_mut(), stream, &bytes);
            }
            store_u32(&mut caller, "fd_write", written, total)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |mut caller: Caller<'_, HostState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         read_ptr: i32|
         -> HostResult<i32> {
            enter_wasi(&mut caller, "fd_read")?;
            if fd != 0 {
                return Ok(errno::BADF);
            }
            if iovecs(&mut caller, "fd_read", iovs, iovs_len)?.is_none() {
                return Ok(errno::INVAL);
            }
            // Standard input is at its end: the event is `event_read`'s.
            store_u32(&mut caller, "fd_read", read_ptr, 0)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |mut caller: Caller<'_, HostState>, fd: i32, stat: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "fd_fdstat_get")?;
            // A character device (so libc line-buffers stdout, a line per
            // log line) that can be read (stdin) or written, not sought.
            const CHARACTER_DEVICE: u8 = 2;
            const RIGHT_FD_READ: u64 = 1 << 1;
            const RIGHT_FD_WRITE: u64 = 1 << 6;
            let rights = match fd {
                0 => RIGHT_FD_READ,
                1 | 2 => RIGHT_FD_WRITE,
                _ => return Ok(errno::BADF),
            };
            let mut out = [0u8; 24];
            out[0] = CHARACTER_DEVICE;
            out[8..16].copy_from_slice(&rights.to_le_bytes());
            store(&mut caller, "fd_fdstat_get", stat, &out)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, HostState>,
         id: i32,
         _precision: i64,
         time: i32|
         -> HostResult<i32> {
            enter_wasi(&mut caller, "clock_time_get")?;
            let Some(ns) = clock_ns(id) else {
                return Ok(errno::INVAL);
            };
            store(&mut caller, "clock_time_get", time, &ns.to_le_bytes())?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut caller: Caller<'_, HostState>, id: i32, res: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "clock_res_get")?;
            if clock_ns(id).is_none() {
                return Ok(errno::INVAL);
            }
            store(&mut caller, "clock_res_get", res, &1_000u64.to_le_bytes())?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, HostState>, buf: i32, len: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "random_get")?;
            let len = len as u32 as usize;
            let range = check_region(&mut caller, "random_get", buf, len)?;
            // The system's generator is slower than a copy: a byte a unit.
            charge_fuel(&mut caller, len as u64)?;
            let Some(memory) = caller.data().memory else {
                return Ok(errno::NOSYS);
            };
            // Filled in place: no host copy as large as the guest asks.
            if getrandom::getrandom(&mut memory.data_mut(&mut caller)[range]).is_err() {
                return Ok(errno::NOSYS);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut caller: Caller<'_, HostState>, count: i32, size: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "environ_sizes_get")?;
            let (n, bytes) = sizes(&environment(caller.data()));
            store_u32(&mut caller, "environ_sizes_get", count, n)?;
            store_u32(&mut caller, "environ_sizes_get", size, bytes)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut caller: Caller<'_, HostState>, pointers: i32, buf: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "environ_get")?;
            let strings = environment(caller.data());
            store_strings(&mut caller, "environ_get", &strings, pointers, buf)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut caller: Caller<'_, HostState>, count: i32, size: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "args_sizes_get")?;
            let (n, bytes) = sizes(&arguments(caller.data()));
            store_u32(&mut caller, "args_sizes_get", count, n)?;
            store_u32(&mut caller, "args_sizes_get", size, bytes)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |mut caller: Caller<'_, HostState>, pointers: i32, buf: i32| -> HostResult<i32> {
            enter_wasi(&mut caller, "args_get")?;
            let strings = arguments(caller.data());
            store_strings(&mut caller, "args_get", &strings, pointers, buf)?;
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |mut caller: Caller<'_, HostState>, code: i32| -> HostResult<()> {
            enter_wasi(&mut caller, "proc_exit")?;
            caller.data_mut().call.exit = Some(code);
            Err(abort())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "sched_yield",
        |mut caller: Caller<'_, HostState>| -> HostResult<i32> {
            enter_wasi(&mut caller, "sched_yield")?;
            Ok(errno::SUCCESS)
        },
    )?;

    // No preopened directories: libc's scan for them ends at the first fd.
    refuse!(linker, "fd_prestat_get", errno::BADF, (i32, i32));
    refuse!(linker, "fd_prestat_dir_name", errno::BADF, (i32, i32, i32));
    // Paths are relative to a directory fd, and there is none.
    refuse!(
        linker,
        "path_create_directory",
        errno::BADF,
        (i32, i32, i32)
    );
    refuse!(
        linker,
        "path_filestat_get",
        errno::BADF,
        (i32, i32, i32, i32, i32)
    );
    refuse!(
        linker,
        "path_filestat_set_times",
        errno::BADF,
        (i32, i32, i32, i32, i64, i64, i32)
    );
    refuse!(
        linker,
        "path_link",
        errno::BADF,
        (i32, i32, i32, i32, i32, i32, i32)
    );
    refuse!(
        linker,
        "path_open",
        errno::BADF,
        (i32, i32, i32, i32, i32, i64, i64, i32, i32)
    );
    refuse!(
        linker,
        "path_readlink",
        errno::BADF,
        (i32, i32, i32, i32, i32, i32)
    );
    refuse!(
        linker,
        "path_remove_directory",
        errno::BADF,
        (i32, i32, i32)
    );
    refuse!(
        linker,
        "path_rename",
        errno::BADF,
        (i32, i32, i32, i32, i32, i32)
    );
    refuse!(
        linker,
        "path_symlink",
        errno::BADF,
        (i32, i32, i32, i32, i32)
    );
    refuse!(linker, "path_unlink_file", errno::BADF, (i32, i32, i32));
    refuse!(linker, "sock_accept", errno::BADF, (i32, i32, i32));
    refuse!(
        linker,
        "sock_recv",
        errno::BADF,
        (i32, i32, i32, i32, i32, i32)
    );
    refuse!(linker, "sock_send", errno::BADF, (i32, i32, i32, i32, i32));
    refuse!(linker, "sock_shutdown", errno::BADF, (i32, i32));
    refuse!(linker, "poll_oneoff", errno::NOSYS, (i32, i32, i32, i32));
    refuse!(linker, "proc_raise", errno::NOSYS, (i32));
    refuse!(linker, "fd_renumber", errno::BADF, (i32, i32));
    // The standard streams are not files: not sought, sized or synced.
    on_fd!(linker, "fd_seek", errno::SPIPE, (i64, i32, i32));
    on_fd!(linker, "fd_tell", errno::SPIPE, (i32));
    on_fd!(linker, "fd_close", errno::SUCCESS, ());
    on_fd!(linker, "fd_advise", errno::SPIPE, (i64, i64, i32));
    on_fd!(linker, "fd_allocate", errno::NOSYS, (i64, i64));
    on_fd!(linker, "fd_datasync", errno::INVAL, ());
    on_fd!(linker, "fd_sync", errno::INVAL, ());
    on_fd!(linker, "fd_fdstat_set_flags", errno::NOSYS, (i32));
    on_fd!(linker, "fd_fdstat_set_rights", errno::NOSYS, (i64, i64));
    on_fd!(linker, "fd_filestat_get", errno::NOSYS, (i32));
    on_fd!(linker, "fd_filestat_set_size", errno::NOSYS, (i64));
    on_fd!(
        linker,
        "fd_filestat_set_times",
        errno::NOSYS,
        (i64, i64, i32)
    );
    on_fd!(linker, "fd_pread", errno::SPIPE, (i32, i32, i64, i32));
    on_fd!(linker, "fd_pwrite", errno::SPIPE, (i32, i32, i64, i32));
    on_fd!(linker, "fd_readdir", errno::BADF, (i32, i32, i64, i32));
    Ok(())
}

/// Appends to stdout (0) or stderr (1); each full line becomes a log line,
/// and a line longer than a log line is cut there rather than held.
fn write_stdio(state: &mut HostState, stream: usize, mut bytes: &[u8]) {
    let level = if stream == 0 {
        LogLevel::Info
    } else {
        LogLevel::Warn
    };
    while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
        let mut line = std::mem::take(&mut state.call.stdio[stream]);
        line.extend_from_slice(&bytes[..end]);
        state.call.push_log(&state.env, level, &line);
        bytes = &bytes[end + 1..];
    }
    let held = &mut state.call.stdio[stream];
    held.extend_from_slice(&bytes[..bytes.len().min(super::host::MAX_LOG_LINE_BYTES)]);
    if held.len() >= super::host::MAX_LOG_LINE_BYTES {
        let line = std::mem::take(held);
        state.call.push_log(&state.env, level, &line);
    }
}

/// The (pointer, length) pairs of an iovec array; `None` if there are more
/// than [`MAX_IOVS`].
fn iovecs(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    iovs: i32,
    count: i32,
) -> HostResult<Option<Vec<(u32, u32)>>> {
    let count = count as u32;
    if count > MAX_IOVS {
        return Ok(None);
    }
    let raw = read(caller, call, iovs, (count * 8) as i32)?;
    Ok(Some(
        raw.chunks_exact(8)
            .map(|c| {
                let word = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                (word(0), word(4))
            })
            .collect(),
    ))
}

/// Nanoseconds on a WASI clock: realtime (0), or, for the monotonic (1)
/// and CPU-time (2, 3) clocks, since the gateway started.
fn clock_ns(id: i32) -> Option<u64> {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    match id {
        0 => Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        ),
        1..=3 => Some(EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64),
        _ => None,
    }
}

/// `KEY=value` for each entry of the function's `config`, NUL-terminated.
fn environment(state: &HostState) -> Vec<Vec<u8>> {
    state
        .env
        .config
        .iter()
        .map(|(k, v)| format!("{k}={v}\0").into_bytes())
        .collect()
}

/// `argv`: the function's name alone.
fn arguments(state: &HostState) -> Vec<Vec<u8>> {
    vec![format!("{}\0", state.env.name).into_bytes()]
}

fn sizes(strings: &[Vec<u8>]) -> (u32, u32) {
    (
        strings.len() as u32,
        strings.iter().map(|s| s.len() as u32).sum(),
    )
}

/// Writes `strings` one after another at `buf`, and a pointer to each at
/// `pointers` (`environ_get`, `args_get`).
fn store_strings(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    strings: &[Vec<u8>],
    pointers: i32,
    buf: i32,
) -> HostResult<()> {
    charge_bytes(caller, strings.iter().map(|s| s.len() + 4).sum())?;
    let mut at = buf as u32;
    for (i, s) in strings.iter().enumerate() {
        store_u32(caller, call, pointers.wrapping_add(4 * i as i32), at)?;
        store(caller, call, at as i32, s)?;
        at = at.wrapping_add(s.len() as u32);
    }
    Ok(())
}

fn store_u32(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    value: u32,
) -> HostResult<()> {
    store(caller, call, ptr, &value.to_le_bytes())
}

/// Writes `bytes` at `ptr`; outside memory, the invocation ends as for
/// any host call given a bad pointer.
fn store(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    bytes: &[u8],
) -> HostResult<()> {
    let range = check_region(caller, call, ptr, bytes.len())?;
    if let Some(memory) = caller.data().memory {
        memory.data_mut(&mut *caller)[range].copy_from_slice(bytes);
    }
    Ok(())
}

fn check_region(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    len: usize,
) -> HostResult<std::ops::Range<usize>> {
    guest_region(caller, call, ptr, len as i32)
}
