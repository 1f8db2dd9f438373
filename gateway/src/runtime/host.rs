//! The host functions a guest imports, and the per-instance state they use.
//!
//! Every host function checks the guest's pointers before touching memory and
//! records a contract violation in [`CallState`] before trapping, so that the
//! invocation's error says exactly what went wrong instead of "host trap".

use super::effects::{Effects, Emit, Invoke, KvArithmeticError, KvWrite, Post, Response};
use super::error::AbiViolation;
use super::{Grants, KvRead, Limits, LogLine};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmgate_abi::{imports, EmitOptions, LogLevel, Status, IMPORT_MODULE};
use wasmi::{Caller, Linker, Memory, ResourceLimiter};
use wasmi_core::LimiterError;

/// KV keys are operator-visible strings; this keeps them printable in a shell.
pub const MAX_KEY_BYTES: usize = 256;
/// A guest writing more keys than this in one invocation is almost surely looping.
pub const MAX_KV_WRITES: usize = 1_000;
/// Longer log lines are cut, so that one chatty guest cannot fill the journal.
pub const MAX_LOG_LINE_BYTES: usize = 1_024;
pub const MAX_LOG_LINES: usize = 100;

/// Fuel every host call costs, whatever it does: about what the call itself
/// takes (crossing into the host, checking arguments), in guest instructions.
pub const HOST_CALL_FUEL: u64 = 20;
/// Bytes a host call moves (copies in or out of guest memory, reads from
/// the KV store) per unit of fuel; see functions/abi/README.md, "Limits".
pub const HOST_BYTES_PER_FUEL: u64 = 8;

/// Settings shared by every instance of one deployed function.
#[derive(Debug)]
pub(crate) struct FunctionEnv {
    pub name: String,
    pub limits: Limits,
    pub grants: Grants,
    pub config: BTreeMap<String, String>,
    pub secrets: super::Secrets,
}

/// Refusals described per invocation; a storm of them is counted, not kept.
pub(crate) const MAX_REFUSED_KEPT: usize = 8;

/// Records an emit or invoke the host answered with a refusal.
fn refuse(caller: &mut Caller<'_, HostState>, what: impl FnOnce() -> String) {
    let call = &mut caller.data_mut().call;
    call.refused_count += 1;
    if call.refused.len() < MAX_REFUSED_KEPT {
        call.refused.push(what());
    }
}

/// What one invocation accumulates; replaced wholesale before each call.
#[derive(Default)]
pub(crate) struct CallState {
    pub envelope: Vec<u8>,
    pub effects: Effects,
    pub logs: Vec<LogLine>,
    pub logs_dropped: usize,
    /// Custom metric updates, applied if the invocation succeeds.
    pub metrics: Vec<crate::custom_metrics::MetricUpdate>,
    /// Emits and invokes the host refused (bad topic, outside the grants),
    /// described; counted past [`MAX_REFUSED_KEPT`]. The guest only sees a
    /// status it may ignore, so the operator needs these.
    pub refused: Vec<String>,
    pub refused_count: usize,
    pub violation: Option<AbiViolation>,
    pub host_failure: Option<String>,
    pub kv: Option<Arc<dyn KvRead>>,
    pub meter: Meter,
    /// A budget a host call found spent; it ended the invocation.
    pub stop: Option<Stop>,
    /// How many events the invocation's batch holds; `None`: not a batch.
    pub batch_len: Option<u32>,
    /// The module's `_initialize` (a WASI reactor's constructors) is
    /// running: WASI calls work, the gateway's do not (no event yet).
    pub initializing: bool,
    /// What the guest wrote to stdout and stderr (WASI `fd_write`) since
    /// its last full line: each line becomes a log line.
    pub stdio: [Vec<u8>; 2],
    /// The code the guest passed to WASI `proc_exit`: 0 ends the
    /// invocation as a success, anything else as a failure.
    pub exit: Option<i32>,
}

impl CallState {
    /// One log line of the guest's, kept unless the invocation has written
    /// [`MAX_LOG_LINES`] already (then counted). Cut to
    /// [`MAX_LOG_LINE_BYTES`], escaped and redacted once, here, for every
    /// place a line is shown: the gateway's log, `invoke`, dead letters.
    pub fn push_log(&mut self, env: &FunctionEnv, level: LogLevel, bytes: &[u8]) {
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs_dropped += 1;
            return;
        }
        let bytes = &bytes[..bytes.len().min(MAX_LOG_LINE_BYTES)];
        let message = env.secrets.redact(crate::text::escape_bytes(bytes));
        self.logs.push(LogLine { level, message });
    }

    /// Writes out what stdout and stderr hold short of a newline: an
    /// invocation's last `printf("done")` is a line too.
    pub fn flush_stdio(&mut self, env: &FunctionEnv) {
        for (fd, level) in [(0, LogLevel::Info), (1, LogLevel::Warn)] {
            let rest = std::mem::take(&mut self.stdio[fd]);
            if !rest.is_empty() {
                self.push_log(env, level, &rest);
            }
        }
    }
}

/// What host calls charge against: the invocation's deadline and fuel.
///
/// The run loop hands the store fuel a slice at a time (`FUEL_SLICE`); a
/// host call takes its cost from the slice, and what the slice cannot cover
/// becomes a debt that the run loop takes from the next slice. Either way it
/// counts against the whole budget, so a charge is never lost.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// When the invocation must end; `None` outside an invocation.
    pub deadline: Option<Instant>,
    /// The whole fuel budget of the invocation.
    pub budget: u64,
    /// Fuel handed to the store so far, the current slice included, and
    /// debts already settled.
    pub granted: u64,
    /// Fuel host calls charged beyond what the current slice held.
    pub debt: u64,
}

/// Which budget a host call found spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    OutOfFuel,
    Deadline,
}

/// The data of a wasmi `Store`: one per instance.
pub(crate) struct HostState {
    pub env: Arc<FunctionEnv>,
    pub limiter: MemoryLimiter,
    pub memory: Option<Memory>,
    pub call: CallState,
}

impl HostState {
    pub fn new(env: Arc<FunctionEnv>) -> Self {
        let limiter = MemoryLimiter {
            limit_bytes: env.limits.memory_bytes,
            hit: false,
        };
        HostState {
            env,
            limiter,
            memory: None,
            call: CallState::default(),
        }
    }
}

/// Caps linear memory and remembers that it did, so that a guest that
/// swallows the failed `memory.grow` still gets reported as a memory bomb.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub limit_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if desired > self.limit_bytes {
            self.hit = true;
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        // Tables hold function references; 64k is far beyond any real guest.
        Ok(desired <= 65_536 && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Marker error that unwinds the guest; the reason is in [`CallState`].
#[derive(Debug)]
struct Abort;

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invocation aborted by the host")
    }
}

impl wasmi::errors::HostError for Abort {}

/// Unwinds the guest; the caller has recorded why in [`CallState`].
pub(super) fn abort() -> wasmi::Error {
    wasmi::Error::host(Abort)
}

pub(super) type HostResult<T> = Result<T, wasmi::Error>;

pub(super) fn violation(caller: &mut Caller<'_, HostState>, v: AbiViolation) -> wasmi::Error {
    caller.data_mut().call.violation.get_or_insert(v);
    wasmi::Error::host(Abort)
}

fn stop(caller: &mut Caller<'_, HostState>, why: Stop) -> wasmi::Error {
    caller.data_mut().call.stop.get_or_insert(why);
    wasmi::Error::host(Abort)
}

/// Where every host function starts: no host calls from a start function
/// (the instance's exports, memory included, are not the host's to use yet),
/// none past the deadline, and [`HOST_CALL_FUEL`] for the call.
fn enter(caller: &mut Caller<'_, HostState>, call: &'static str) -> HostResult<()> {
    if caller.data().call.initializing {
        return Err(violation(caller, AbiViolation::HostCallInStart { call }));
    }
    enter_wasi(caller, call)
}

/// [`enter`] for the WASI functions (`wasi.rs`), which a reactor's
/// `_initialize` may call too: they need only the instance's memory.
pub(super) fn enter_wasi(caller: &mut Caller<'_, HostState>, call: &'static str) -> HostResult<()> {
    if caller.data().memory.is_none() {
        return Err(violation(caller, AbiViolation::HostCallInStart { call }));
    }
    if let Some(deadline) = caller.data().call.meter.deadline {
        if Instant::now() >= deadline {
            return Err(stop(caller, Stop::Deadline));
        }
    }
    charge_fuel(caller, HOST_CALL_FUEL)
}

/// Charges for moving `bytes` bytes ([`HOST_BYTES_PER_FUEL`]).
pub(super) fn charge_bytes(caller: &mut Caller<'_, HostState>, bytes: usize) -> HostResult<()> {
    charge_fuel(caller, (bytes as u64).div_ceil(HOST_BYTES_PER_FUEL))
}

/// Takes `fuel` from the store's current slice; what the slice cannot cover
/// becomes a debt the run loop settles (see [`Meter`]). Ends the invocation
/// when the whole budget is spent.
pub(super) fn charge_fuel(caller: &mut Caller<'_, HostState>, fuel: u64) -> HostResult<()> {
    // Fuel metering is always on (`Runtime::new`); without it there is
    // nothing to charge.
    let Ok(left) = caller.get_fuel() else {
        return Ok(());
    };
    let covered = left.min(fuel);
    caller.set_fuel(left - covered)?;
    let meter = &mut caller.data_mut().call.meter;
    meter.debt = meter.debt.saturating_add(fuel - covered);
    if meter.debt > 0 && meter.granted.saturating_add(meter.debt) > meter.budget {
        return Err(stop(caller, Stop::OutOfFuel));
    }
    Ok(())
}

fn host_failure(caller: &mut Caller<'_, HostState>, message: String) -> wasmi::Error {
    caller.data_mut().call.host_failure.get_or_insert(message);
    wasmi::Error::host(Abort)
}

/// Where `len` bytes at `ptr` are in guest memory, or the contract
/// violation that ends the invocation. Pointers are `i32` on the wire but
/// unsigned in meaning; a negative length is simply very large.
pub(super) fn guest_region(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> HostResult<std::ops::Range<usize>> {
    let Some(memory) = caller.data().memory else {
        return Err(violation(caller, AbiViolation::HostCallInStart { call }));
    };
    let memory_len = memory.data(&*caller).len();
    region(memory_len, ptr, len).ok_or_else(|| {
        violation(
            caller,
            AbiViolation::OutOfBounds {
                call,
                ptr: ptr as u32,
                len: len as u32,
                memory_len,
            },
        )
    })
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(super) fn read(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> HostResult<Vec<u8>> {
    let range = guest_region(caller, call, ptr, len)?;
    let Some(memory) = caller.data().memory else {
        return Err(violation(caller, AbiViolation::HostCallInStart { call }));
    };
    // Paid for before the copy, so that a spent budget stops it.
    charge_bytes(caller, range.len())?;
    Ok(memory.data(&*caller)[range].to_vec())
}

/// The copy-out rule shared by `event_read`, `kv_get` and `config_get`: copy
/// only if it fits, always return the full length.
fn copy_out(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    value: &[u8],
    dst: i32,
    cap: i32,
) -> HostResult<i32> {
    let Some(memory) = caller.data().memory else {
        return Err(violation(caller, AbiViolation::HostCallInStart { call }));
    };
    let fits =
        region(memory.data(&*caller).len(), dst, cap).is_some_and(|r| value.len() <= r.len());
    if fits {
        charge_bytes(caller, value.len())?;
    }
    let data = memory.data_mut(&mut *caller);
    let Some(range) = region(data.len(), dst, cap) else {
        let memory_len = data.len();
        return Err(violation(
            caller,
            AbiViolation::OutOfBounds {
                call,
                ptr: dst as u32,
                len: cap as u32,
                memory_len,
            },
        ));
    };
    if value.len() <= range.len() {
        data[range.start..range.start + value.len()].copy_from_slice(value);
    }
    // Values are bounded well below 2 GiB by the limits, so this cannot wrap.
    Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
}

pub(super) fn region(memory_len: usize, ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    (end <= memory_len).then_some(start..end)
}

/// Reads a UTF-8 string argument; `Ok(None)` means "answer INVALID_ARGUMENT".
fn read_str(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> HostResult<Option<String>> {
    Ok(String::from_utf8(read(caller, call, ptr, len)?).ok())
}

fn read_key(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> HostResult<Option<String>> {
    if len as u32 as usize > MAX_KEY_BYTES {
        return Ok(None);
    }
    Ok(read_str(caller, call, ptr, len)?.filter(|k| !k.is_empty()))
}

fn check_size(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    what: &'static str,
    len: i32,
    limit: usize,
) -> HostResult<()> {
    let len = len as u32 as usize;
    if len > limit {
        return Err(violation(
            caller,
            AbiViolation::TooLarge {
                call,
                what,
                len,
                limit,
            },
        ));
    }
    Ok(())
}

/// The committed value of `key` in the function's namespace. A failing store
/// is the gateway's problem, not the guest's: it fails the invocation so that
/// it is retried, rather than showing the guest a missing key.
fn committed(caller: &mut Caller<'_, HostState>, key: &str) -> HostResult<Option<Vec<u8>>> {
    let state = caller.data();
    let Some(kv) = state.call.kv.clone() else {
        return Ok(None);
    };
    let namespace = state.env.name.clone();
    kv.get(&namespace, key)
        .map_err(|e| host_failure(caller, format!("KV read of {namespace}/{key:?}: {e}")))
}

fn status(s: Status) -> i32 {
    s.code()
}

fn kv_status(e: KvArithmeticError) -> i32 {
    status(match e {
        KvArithmeticError::NotANumber => Status::NotANumber,
        KvArithmeticError::Overflow => Status::InvalidArgument,
    })
}

/// What `emit` and `invoke` share: a per-invocation count limit, a payload
/// size limit, a UTF-8 name (topic or function) and the payload itself.
/// `Ok(None)` means "answer INVALID_ARGUMENT" (the name is not UTF-8).
fn read_message(
    caller: &mut Caller<'_, HostState>,
    call: &'static str,
    sent: usize,
    (name, name_len): (i32, i32),
    (payload, payload_len): (i32, i32),
) -> HostResult<Option<(String, Vec<u8>)>> {
    let limits = &caller.data().env.limits;
    let (max_count, max_bytes) = (limits.max_emits, limits.max_emit_bytes);
    if sent >= max_count {
        return Err(violation(
            caller,
            AbiViolation::TooMany {
                call,
                limit: max_count,
            },
        ));
    }
    check_size(caller, call, "payload", payload_len, max_bytes)?;
    let Some(name) = read_str(caller, call, name, name_len)? else {
        return Ok(None);
    };
    let payload = read(caller, call, payload, payload_len)?;
    Ok(Some((name, payload)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Registers every host function under [`IMPORT_MODULE`].
pub(crate) fn define(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    let m = IMPORT_MODULE;

    linker.func_wrap(
        m,
        imports::EVENT_READ,
        |mut caller: Caller<'_, HostState>, dst: i32, cap: i32| -> HostResult<i32> {
            enter(&mut caller, imports::EVENT_READ)?;
            let envelope = std::mem::take(&mut caller.data_mut().call.envelope);
            let result = copy_out(&mut caller, imports::EVENT_READ, &envelope, dst, cap);
            caller.data_mut().call.envelope = envelope;
            result
        },
    )?;

    linker.func_wrap(
        m,
        imports::EMIT,
        |mut caller: Caller<'_, HostState>,
         topic: i32,
         topic_len: i32,
         payload: i32,
         payload_len: i32,
         flags: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::EMIT)?;
            let sent = caller.data().call.effects.emits.len();
            let Some((topic, payload)) = read_message(
                &mut caller,
                imports::EMIT,
                sent,
                (topic, topic_len),
                (payload, payload_len),
            )?
            else {
                return Ok(status(Status::InvalidArgument));
            };
            let Some(options) = EmitOptions::from_flags(flags) else {
                return Ok(status(Status::InvalidArgument));
            };
            if !wasmgate_abi::is_valid_publish_topic(&topic) {
                refuse(&mut caller, || {
                    format!("emit to {topic:?} refused: not a topic one may publish to (wildcards, '$' topics)")
                });
                return Ok(status(Status::InvalidArgument));
            }
            if !caller
                .data()
                .env
                .grants
                .allows_emit(&topic, options.destination)
            {
                refuse(&mut caller, || denied_emit(&topic, options.destination));
                return Ok(status(Status::Denied));
            }
            caller.data_mut().call.effects.emits.push(Emit {
                topic,
                payload,
                options,
            });
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::KV_GET,
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         dst: i32,
         cap: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::KV_GET)?;
            let Some(key) = read_key(&mut caller, imports::KV_GET, key, key_len)? else {
                return Ok(status(Status::InvalidArgument));
            };
            // Only a pending addition (or no pending write) depends on the store.
            let needs_committed = !matches!(
                caller.data().call.effects.kv.get(&key),
                Some(KvWrite::Put(_) | KvWrite::Delete)
            );
            let base = if needs_committed {
                committed(&mut caller, &key)?
            } else {
                None
            };
            // Read from the store on every call, whether or not it fits.
            charge_bytes(&mut caller, base.as_ref().map_or(0, Vec::len))?;
            match caller.data().call.effects.read(&key, || base) {
                Ok(Some(value)) => copy_out(&mut caller, imports::KV_GET, &value, dst, cap),
                Ok(None) => Ok(status(Status::NotFound)),
                Err(e) => Ok(kv_status(e)),
            }
        },
    )?;

    linker.func_wrap(
        m,
        imports::KV_PUT,
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         value: i32,
         value_len: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::KV_PUT)?;
            let limit = caller.data().env.limits.max_kv_value_bytes;
            check_size(&mut caller, imports::KV_PUT, "value", value_len, limit)?;
            let Some(key) = read_key(&mut caller, imports::KV_PUT, key, key_len)? else {
                return Ok(status(Status::InvalidArgument));
            };
            let value = read(&mut caller, imports::KV_PUT, value, value_len)?;
            check_kv_writes(&mut caller, &key)?;
            caller.data_mut().call.effects.put(key, value);
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::KV_DELETE,
        |mut caller: Caller<'_, HostState>, key: i32, key_len: i32| -> HostResult<i32> {
            enter(&mut caller, imports::KV_DELETE)?;
            let Some(key) = read_key(&mut caller, imports::KV_DELETE, key, key_len)? else {
                return Ok(status(Status::InvalidArgument));
            };
            check_kv_writes(&mut caller, &key)?;
            caller.data_mut().call.effects.delete(key);
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::KV_INCREMENT,
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         delta: i64,
         dst: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::KV_INCREMENT)?;
            let Some(key) = read_key(&mut caller, imports::KV_INCREMENT, key, key_len)? else {
                return Ok(status(Status::InvalidArgument));
            };
            // Validate the output slot before changing anything.
            copy_out(&mut caller, imports::KV_INCREMENT, &[], dst, 8)?;
            check_kv_writes(&mut caller, &key)?;
            let base = committed(&mut caller, &key)?;
            match caller
                .data_mut()
                .call
                .effects
                .increment(&key, delta, || base)
            {
                Ok(value) => {
                    copy_out(
                        &mut caller,
                        imports::KV_INCREMENT,
                        &value.to_le_bytes(),
                        dst,
                        8,
                    )?;
                    Ok(status(Status::Ok))
                }
                Err(e) => Ok(kv_status(e)),
            }
        },
    )?;

    linker.func_wrap(
        m,
        imports::LOG,
        |mut caller: Caller<'_, HostState>, level: i32, msg: i32, msg_len: i32| -> HostResult<()> {
            enter(&mut caller, imports::LOG)?;
            if caller.data().call.logs.len() >= MAX_LOG_LINES {
                caller.data_mut().call.logs_dropped += 1;
                return Ok(());
            }
            let len = (msg_len as u32 as usize).min(MAX_LOG_LINE_BYTES);
            let bytes = read(&mut caller, imports::LOG, msg, len as i32)?;
            let level = LogLevel::from_code(level).unwrap_or(LogLevel::Info);
            let state = caller.data_mut();
            state.call.push_log(&state.env, level, &bytes);
            Ok(())
        },
    )?;

    linker.func_wrap(
        m,
        imports::NOW_MS,
        |mut caller: Caller<'_, HostState>| -> HostResult<i64> {
            enter(&mut caller, imports::NOW_MS)?;
            Ok(now_ms())
        },
    )?;

    linker.func_wrap(
        m,
        imports::CONFIG_GET,
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         dst: i32,
         cap: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::CONFIG_GET)?;
            let Some(key) = read_key(&mut caller, imports::CONFIG_GET, key, key_len)? else {
                return Ok(status(Status::InvalidArgument));
            };
            let env = caller.data().env.clone();
            match env.config.get(&key) {
                Some(value) => {
                    copy_out(&mut caller, imports::CONFIG_GET, value.as_bytes(), dst, cap)
                }
                None => Ok(status(Status::NotFound)),
            }
        },
    )?;

    linker.func_wrap(
        m,
        imports::SECRET_GET,
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         dst: i32,
         cap: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::SECRET_GET)?;
            let Some(key) = read_key(&mut caller, imports::SECRET_GET, key, key_len)? else {
                return Ok(status(Status::InvalidArgument));
            };
            let env = caller.data().env.clone();
            if !env.grants.allows_secret(&key) {
                refuse(&mut caller, || {
                    format!("secret {key:?} denied: not in grants.secrets")
                });
                return Ok(status(Status::Denied));
            }
            match env.secrets.get(&key) {
                Some(value) => {
                    copy_out(&mut caller, imports::SECRET_GET, value.as_bytes(), dst, cap)
                }
                None => Ok(status(Status::NotFound)),
            }
        },
    )?;

    linker.func_wrap(
        m,
        imports::INVOKE,
        |mut caller: Caller<'_, HostState>,
         function: i32,
         function_len: i32,
         payload: i32,
         payload_len: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::INVOKE)?;
            let sent = caller.data().call.effects.invokes.len();
            let Some((function, payload)) = read_message(
                &mut caller,
                imports::INVOKE,
                sent,
                (function, function_len),
                (payload, payload_len),
            )?
            else {
                return Ok(status(Status::InvalidArgument));
            };
            if !caller.data().env.grants.allows_invoke(&function) {
                refuse(&mut caller, || {
                    format!("invoke of {function:?} denied: not in grants.invoke")
                });
                return Ok(status(Status::Denied));
            }
            caller.data_mut().call.effects.invokes.push(Invoke {
                function,
                payload,
                whole_event: false,
            });
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::RESPOND,
        |mut caller: Caller<'_, HostState>,
         code: i32,
         body: i32,
         body_len: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::RESPOND)?;
            let limit = caller.data().env.limits.max_emit_bytes;
            check_size(&mut caller, imports::RESPOND, "body", body_len, limit)?;
            let body = read(&mut caller, imports::RESPOND, body, body_len)?;
            let Ok(code @ 100..=599) = u16::try_from(code) else {
                return Ok(status(Status::InvalidArgument));
            };
            let effects = &mut caller.data_mut().call.effects;
            // Headers set before the status stay.
            let headers = effects
                .response
                .take()
                .map(|r| r.headers)
                .unwrap_or_default();
            effects.response = Some(Response {
                status: code,
                body,
                headers,
            });
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::RESPOND_HEADER,
        |mut caller: Caller<'_, HostState>,
         name: i32,
         name_len: i32,
         value: i32,
         value_len: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::RESPOND_HEADER)?;
            check_size(
                &mut caller,
                imports::RESPOND_HEADER,
                "name",
                name_len,
                MAX_HEADER_BYTES,
            )?;
            check_size(
                &mut caller,
                imports::RESPOND_HEADER,
                "value",
                value_len,
                MAX_HEADER_BYTES,
            )?;
            let name = read(&mut caller, imports::RESPOND_HEADER, name, name_len)?;
            let value = read(&mut caller, imports::RESPOND_HEADER, value, value_len)?;
            let (Ok(name), Ok(value)) = (String::from_utf8(name), String::from_utf8(value)) else {
                return Ok(status(Status::InvalidArgument));
            };
            if !wasmgate_abi::valid_response_header(&name, &value) {
                return Ok(status(Status::InvalidArgument));
            }
            let effects = &mut caller.data_mut().call.effects;
            let response = effects.response.get_or_insert_with(|| Response {
                status: 200,
                body: Vec::new(),
                headers: Vec::new(),
            });
            if response.headers.len() >= wasmgate_abi::MAX_RESPONSE_HEADERS {
                return Ok(status(Status::InvalidArgument));
            }
            response.headers.push((name, value));
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::POST_TO_CONNECTION,
        |mut caller: Caller<'_, HostState>,
         connection: i32,
         connection_len: i32,
         data: i32,
         data_len: i32|
         -> HostResult<i32> {
            enter(&mut caller, imports::POST_TO_CONNECTION)?;
            check_size(
                &mut caller,
                imports::POST_TO_CONNECTION,
                "connection",
                connection_len,
                MAX_KEY_BYTES,
            )?;
            let limit = caller.data().env.limits.max_emit_bytes;
            check_size(
                &mut caller,
                imports::POST_TO_CONNECTION,
                "data",
                data_len,
                limit,
            )?;
            let connection = read(
                &mut caller,
                imports::POST_TO_CONNECTION,
                connection,
                connection_len,
            )?;
            let data = read(&mut caller, imports::POST_TO_CONNECTION, data, data_len)?;
            let Ok(connection) = String::from_utf8(connection) else {
                return Ok(status(Status::InvalidArgument));
            };
            let posts = &mut caller.data_mut().call.effects.posts;
            if connection.is_empty() || posts.len() >= MAX_POSTS {
                return Ok(status(Status::InvalidArgument));
            }
            posts.push(Post { connection, data });
            Ok(status(Status::Ok))
        },
    )?;

    linker.func_wrap(
        m,
        imports::METRIC,
        |mut caller: Caller<'_, HostState>,
         name: i32,
         name_len: i32,
         kind: i32,
         value: f64|
         -> HostResult<i32> {
            use crate::custom_metrics::{MetricUpdate, MAX_PER_INVOCATION};
            enter(&mut caller, imports::METRIC)?;
            let Some(kind) = wasmgate_abi::MetricKind::from_code(kind) else {
                return Ok(status(Status::InvalidArgument));
            };
            if caller.data().call.metrics.len() >= MAX_PER_INVOCATION
                || !(0..=MAX_METRIC_NAME_BYTES).contains(&name_len)
            {
                return Ok(status(Status::InvalidArgument));
            }
            let bytes = read(&mut caller, imports::METRIC, name, name_len)?;
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return Ok(status(Status::InvalidArgument));
            };
            match MetricUpdate::parse(text, kind, value) {
                Ok(update) => {
                    caller.data_mut().call.metrics.push(update);
                    Ok(status(Status::Ok))
                }
                Err(why) => {
                    // The guest sees only the status; the operator, why.
                    refuse(&mut caller, || why);
                    Ok(status(Status::InvalidArgument))
                }
            }
        },
    )?;

    linker.func_wrap(
        m,
        imports::ITEM_FAILED,
        |mut caller: Caller<'_, HostState>, index: i32| -> HostResult<i32> {
            enter(&mut caller, imports::ITEM_FAILED)?;
            let call = &mut caller.data_mut().call;
            let Some(len) = call.batch_len else {
                return Ok(status(Status::InvalidArgument));
            };
            match u32::try_from(index) {
                Ok(index) if index < len => {
                    call.effects.failed_items.insert(index);
                    Ok(status(Status::Ok))
                }
                _ => Ok(status(Status::InvalidArgument)),
            }
        },
    )?;

    Ok(())
}

/// The longest `metric` name, labels included.
pub const MAX_METRIC_NAME_BYTES: i32 = 512;

/// The most WebSocket messages one invocation may send.
pub const MAX_POSTS: usize = 100;

/// The longest header name or value a function may answer with.
pub const MAX_HEADER_BYTES: usize = 8 << 10;

/// Why an emit was denied, and the grant that would allow it: the topic's
/// first level and everything under it, which is what a function's grants
/// usually are (`telemetry/#`).
fn denied_emit(topic: &str, destination: wasmgate_abi::Destination) -> String {
    let key = match destination {
        wasmgate_abi::Destination::Local => "local",
        wasmgate_abi::Destination::Upstream => "upstream",
    };
    let first = topic.split('/').next().unwrap_or(topic);
    let filter = if first == topic {
        topic.to_owned()
    } else {
        format!("{first}/#")
    };
    format!(
        "emit to {topic:?} denied: outside the function's grants; to allow it, add to the function's config: grants.{key} = [{filter:?}]"
    )
}

fn check_kv_writes(caller: &mut Caller<'_, HostState>, key: &str) -> HostResult<()> {
    let kv = &caller.data().call.effects.kv;
    if kv.len() >= MAX_KV_WRITES && !kv.contains_key(key) {
        return Err(violation(
            caller,
            AbiViolation::TooMany {
                call: "kv writes",
                limit: MAX_KV_WRITES,
            },
        ));
    }
    Ok(())
}
