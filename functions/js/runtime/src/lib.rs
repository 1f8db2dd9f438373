//! The JavaScript runtime module: a wasmgate function that runs a Node-RED
//! style JavaScript function on each MQTT message, in QuickJS (QuickJS-NG
//! through `rquickjs`), compiled with the engine into one wasm32-wasip1
//! reactor module.
//!
//! The script (the one bundled at build time, or the function's config
//! `script`, or a Node-RED function-node body in config `function_body`) is
//! evaluated once per instance, on the instance's first event (the host
//! calls are not available before it); a warm instance keeps the engine and
//! calls the script's `handle(msg)` for each message:
//!
//! - `msg = {topic, payload, qos, retain}` (plus `userProperties` when the
//!   message has MQTT 5 user properties); `payload` is the parsed JSON value
//!   when the payload is JSON, else a string when it is UTF-8, else a
//!   `Uint8Array`;
//! - the return value: a message object, an array of them (nested arrays
//!   are walked, `null`s skipped, as Node-RED's outputs), or `null` /
//!   `undefined` for nothing. Each message needs a string `topic`; its
//!   `payload` is sent as is when it is a string or a `Uint8Array` /
//!   `ArrayBuffer`, else as JSON. QoS 1 to the local broker unless
//!   `msg.qos` (0-2), `msg.retain` or `msg.upstream = true` say otherwise;
//! - a thrown exception fails the invocation (nothing it emitted is kept),
//!   logged with its message and where it was thrown.
//!
//! Globals: `node.log/warn/error/debug/trace` and `console.log/info/warn/
//! error/debug` (log lines), `node.send(msg)` (emits now, as `return` does),
//! `node.name` (the function's name), `env.get(key)` (a config value, or
//! `undefined`), `context.get(key)` / `context.set(key, value)` (the
//! function's KV namespace, values stored as JSON; `undefined` deletes).
#![allow(unsafe_code)] // `export!`'s `#[no_mangle]` exports.

use std::cell::RefCell;

use rquickjs::context::intrinsic;
use rquickjs::function::Rest;
use rquickjs::{
    ArrayBuffer, CatchResultExt, CaughtError, Context, Ctx as Js, Exception, Function, Object,
    Persistent, Runtime, TypedArray, Value,
};
use wasmgate_sdk::{events, Ctx, DefaultHost, Error, Event, Host, LogLevel, MqttMessage};

/// The script bundled at build time (`JS_RUNTIME_SCRIPT`, see build.rs).
const BUNDLED: &str = include_str!(concat!(env!("OUT_DIR"), "/script.js"));
const BUNDLED_NAME: &str = env!("JS_RUNTIME_SCRIPT_NAME");

/// Returned when the script does not evaluate or defines no `handle`.
pub const SCRIPT_ERROR: i32 = 20;
/// Returned when `handle` throws.
pub const THREW: i32 = 21;
/// Returned when what `handle` returned cannot be sent (not a message, no
/// topic, an emit the host refused).
pub const BAD_RESULT: i32 = 22;
/// Returned for an event that is not an MQTT message (or a batch of them).
pub const UNSUPPORTED_EVENT: i32 = 23;

/// The engine a warm instance keeps between invocations.
struct Engine {
    // Field order matters: the function handle and the context go before the runtime.
    handle: Persistent<Function<'static>>,
    context: Context,
    _runtime: Runtime,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    ENGINE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Engine::new(ctx.context().function)?);
        }
        let engine = slot.as_ref().expect("set above");
        for item in events(event) {
            match item? {
                Event::Mqtt(msg) => engine.run(&msg)?,
                _ => {
                    return Err(Error::user(
                        UNSUPPORTED_EVENT,
                        "the JavaScript runtime handles MQTT messages only",
                    ))
                }
            }
        }
        Ok(())
    })
}

wasmgate_sdk::export!(handle);

fn host() -> DefaultHost {
    DefaultHost::default()
}

fn log(level: LogLevel, line: &str) {
    host().log(level, line);
}

/// A config value of any size (copy-out: ask again with the length it said).
fn config(key: &str) -> Option<String> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = host().config_get(key, &mut buf);
        let n = usize::try_from(n).ok()?; // NOT_FOUND (or another status)
        if n <= buf.len() {
            buf.truncate(n);
            return String::from_utf8(buf).ok();
        }
        buf = vec![0u8; n];
    }
}

/// A KV value of any size.
fn kv_get(key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = usize::try_from(host().kv_get(key, &mut buf)).ok()?;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        buf = vec![0u8; n];
    }
}

impl Engine {
    fn new(function: &str) -> Result<Engine, Error> {
        let (source, name) = if let Some(script) = config("script") {
            (script, "config:script".to_owned())
        } else if let Some(body) = config("function_body") {
            // A Node-RED function node's body, on one line with the wrapper
            // so that line numbers in errors stay the user's.
            (
                format!("function handle(msg) {{{body}\n}}"),
                "config:function_body".to_owned(),
            )
        } else {
            (BUNDLED.to_owned(), BUNDLED_NAME.to_owned())
        };

        let runtime = Runtime::new().map_err(|_| init_failed("the JavaScript runtime"))?;
        // Only what a function node needs: no Promise (nothing would run its
        // jobs), Proxy, WeakRef or Performance.
        let context = Context::custom::<(
            intrinsic::Date,
            intrinsic::Eval,
            intrinsic::RegExpCompiler,
            intrinsic::RegExp,
            intrinsic::Json,
            intrinsic::MapSet,
            intrinsic::TypedArrays,
        )>(&runtime)
        .map_err(|_| init_failed("the JavaScript context"))?;

        let handle = context.with(|js| -> Result<_, Error> {
            install_globals(&js, function).map_err(|_| init_failed("the globals"))?;
            let mut options = rquickjs::context::EvalOptions::default();
            options.filename = Some(name.clone());
            options.strict = false;
            js.eval_with_options::<(), _>(source, options)
                .catch(&js)
                .map_err(|e| {
                    log_caught(&format!("script {name} failed to load: "), &e);
                    Error::user(SCRIPT_ERROR, "the script failed to load")
                })?;
            let handle: Option<Value> = js.globals().get("handle").ok();
            let Some(handle) = handle.and_then(|h| h.into_function()) else {
                log(
                    LogLevel::Error,
                    &format!("script {name} defines no function handle(msg)"),
                );
                return Err(Error::user(
                    SCRIPT_ERROR,
                    "the script defines no handle(msg)",
                ));
            };
            Ok(Persistent::save(&js, handle))
        })?;
        Ok(Engine {
            handle,
            context,
            _runtime: runtime,
        })
    }

    fn run(&self, msg: &MqttMessage<'_>) -> Result<(), Error> {
        self.context.with(|js| {
            let handle = self
                .handle
                .clone()
                .restore(&js)
                .map_err(|_| Error::msg("the script's handle is gone"))?;
            let arg = message(&js, msg).map_err(|_| Error::msg("could not build msg"))?;
            let result: Value = handle.call((arg,)).catch(&js).map_err(|e| {
                log_caught("handle threw: ", &e);
                Error::user(THREW, "handle(msg) threw")
            })?;
            send(&js, result).catch(&js).map_err(|e| {
                log_caught("", &e);
                Error::user(BAD_RESULT, "handle(msg) returned what cannot be sent")
            })
        })
    }
}

fn init_failed(what: &str) -> Error {
    log(LogLevel::Error, &format!("could not create {what}"));
    Error::user(SCRIPT_ERROR, "the JavaScript engine failed to start")
}

/// Logs a caught JavaScript exception: its message and the first frame of
/// its stack, on one line.
fn log_caught(prefix: &str, error: &CaughtError<'_>) {
    let text = match error {
        CaughtError::Exception(e) => {
            let mut text = String::new();
            let name: Option<String> = e.get("name").ok();
            text.push_str(name.as_deref().unwrap_or("Error"));
            text.push_str(": ");
            text.push_str(&e.message().unwrap_or_default());
            if let Some(frame) = e.stack().as_deref().and_then(|s| s.lines().next()) {
                text.push_str(" (");
                text.push_str(frame.trim());
                text.push(')');
            }
            text
        }
        CaughtError::Value(v) => format!("uncaught {}", describe(v)),
        CaughtError::Error(e) => e.to_string(),
    };
    log(LogLevel::Error, &format!("{prefix}{text}"));
}

/// A value as a log line shows it: strings as they are, the rest as JSON
/// (or `String(value)` where JSON has nothing to say).
fn describe(value: &Value<'_>) -> String {
    if let Some(s) = value.as_string() {
        return s.to_string().unwrap_or_default();
    }
    if value.is_object() && !value.is_function() {
        if let Ok(Some(json)) = value.ctx().json_stringify(value.clone()) {
            if let Ok(json) = json.to_string() {
                return json;
            }
        }
    }
    value
        .ctx()
        .globals()
        .get::<_, Function>("String")
        .and_then(|f| f.call::<_, String>((value.clone(),)))
        .unwrap_or_default()
}

fn install_globals<'js>(js: &Js<'js>, function: &str) -> rquickjs::Result<()> {
    let globals = js.globals();

    let node = Object::new(js.clone())?;
    for (name, level) in [
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("log", LogLevel::Info),
        ("debug", LogLevel::Debug),
        ("trace", LogLevel::Trace),
    ] {
        node.set(name, logger(js, level)?)?;
    }
    node.set(
        "send",
        Function::new(js.clone(), |js: Js<'js>, msg: Value<'js>| send(&js, msg))?,
    )?;
    node.set("name", function)?;
    node.set("id", function)?;
    globals.set("node", node)?;

    let console = Object::new(js.clone())?;
    for (name, level) in [
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("log", LogLevel::Info),
        ("info", LogLevel::Info),
        ("debug", LogLevel::Debug),
    ] {
        console.set(name, logger(js, level)?)?;
    }
    globals.set("console", console)?;

    let env = Object::new(js.clone())?;
    env.set(
        "get",
        Function::new(js.clone(), |key: String| config(&key))?,
    )?;
    globals.set("env", env)?;

    let context = Object::new(js.clone())?;
    context.set(
        "get",
        Function::new(
            js.clone(),
            |js: Js<'js>, key: String| -> rquickjs::Result<Value<'js>> {
                match kv_get(&key) {
                    None => Ok(Value::new_undefined(js)),
                    Some(bytes) => js.json_parse(bytes),
                }
            },
        )?,
    )?;
    context.set(
        "set",
        Function::new(
            js.clone(),
            |js: Js<'js>, key: String, value: Value<'js>| -> rquickjs::Result<()> {
                let status = if value.is_undefined() {
                    host().kv_delete(&key)
                } else {
                    let Some(json) = js.json_stringify(value)? else {
                        return Err(Exception::throw_type(&js, "context.set: not JSON"));
                    };
                    host().kv_put(&key, json.to_string()?.as_bytes())
                };
                if status < 0 {
                    return Err(Exception::throw_message(
                        &js,
                        &format!("context.set({key:?}): status {status}"),
                    ));
                }
                Ok(())
            },
        )?,
    )?;
    globals.set("context", context)?;
    Ok(())
}

fn logger<'js>(js: &Js<'js>, level: LogLevel) -> rquickjs::Result<Function<'js>> {
    Function::new(js.clone(), move |args: Rest<Value<'js>>| {
        let line: Vec<String> = args.0.iter().map(describe).collect();
        log(level, &line.join(" "));
    })
}

/// The `msg` for one MQTT message.
fn message<'js>(js: &Js<'js>, msg: &MqttMessage<'_>) -> rquickjs::Result<Object<'js>> {
    let obj = Object::new(js.clone())?;
    obj.set("topic", msg.topic)?;
    obj.set("payload", payload(js, msg.payload)?)?;
    obj.set("qos", msg.qos)?;
    obj.set("retain", msg.retain)?;
    let mut props = None;
    for pair in msg.user_properties.iter() {
        let Ok(pair) = pair else { break };
        let props = match &props {
            Some(p) => p,
            None => props.insert(Object::new(js.clone())?),
        };
        props.set(pair.name, pair.value)?;
    }
    if let Some(props) = props {
        obj.set("userProperties", props)?;
    }
    Ok(obj)
}

/// The payload as Node-RED's MQTT-in node's "auto-detect" gives it: parsed
/// JSON, else a string, else bytes.
fn payload<'js>(js: &Js<'js>, bytes: &[u8]) -> rquickjs::Result<Value<'js>> {
    let looks_like_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| b"{[\"-0123456789tfn".contains(b));
    if looks_like_json && !bytes.contains(&0) {
        match js.json_parse(bytes) {
            Ok(value) => return Ok(value),
            Err(rquickjs::Error::Exception) => {
                js.catch(); // Not JSON: clear the SyntaxError.
            }
            Err(e) => return Err(e),
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(rquickjs::String::from_str(js.clone(), text)?.into_value()),
        Err(_) => Ok(TypedArray::<u8>::new_copy(js.clone(), bytes)?.into_value()),
    }
}

/// Emits what `handle` returned or `node.send` was given.
fn send<'js>(js: &Js<'js>, value: Value<'js>) -> rquickjs::Result<()> {
    if value.is_null() || value.is_undefined() {
        return Ok(());
    }
    if let Some(array) = value.as_array() {
        for item in array.iter::<Value>() {
            send(js, item?)?;
        }
        return Ok(());
    }
    let Some(msg) = value.as_object() else {
        return Err(Exception::throw_type(
            js,
            "handle(msg) must return a msg object, an array of them, or null",
        ));
    };
    let topic: Value = msg.get("topic")?;
    let Some(topic) = topic.as_string() else {
        return Err(Exception::throw_type(js, "msg.topic must be a string"));
    };
    let topic = topic.to_string()?;

    let payload: Value = msg.get("payload")?;
    let bytes: Vec<u8> = if let Some(s) = payload.as_string() {
        s.to_string()?.into_bytes()
    } else if payload.is_undefined() || payload.is_null() {
        Vec::new()
    } else if let Ok(array) = TypedArray::<u8>::from_value(payload.clone()) {
        // SAFETY: copied before any JavaScript runs again.
        unsafe { array.as_bytes() }.unwrap_or_default().to_vec()
    } else if let Some(buffer) = ArrayBuffer::from_value(payload.clone()) {
        // SAFETY: as above.
        unsafe { buffer.as_bytes() }.unwrap_or_default().to_vec()
    } else {
        match js.json_stringify(payload)? {
            Some(json) => json.to_string()?.into_bytes(),
            None => {
                return Err(Exception::throw_type(
                    js,
                    "msg.payload cannot be sent as JSON",
                ));
            }
        }
    };

    let qos: Value = msg.get("qos")?;
    let qos = match qos.as_number() {
        None => 1,
        Some(q) if q == 0.0 || q == 1.0 || q == 2.0 => q as i32,
        Some(_) => return Err(Exception::throw_range(js, "msg.qos must be 0, 1 or 2")),
    };
    let retain = msg.get::<_, Value>("retain")?.as_bool() == Some(true);
    let upstream = msg.get::<_, Value>("upstream")?.as_bool() == Some(true);
    let flags = qos | (i32::from(retain) << 2) | (i32::from(upstream) << 3);

    let status = host().emit(&topic, &bytes, flags);
    if status < 0 {
        let why = match status {
            -2 => "invalid topic",
            -3 => "denied by the function's grants",
            _ => "refused",
        };
        return Err(Exception::throw_message(
            js,
            &format!("emit to {topic:?} failed: {why}"),
        ));
    }
    Ok(())
}
