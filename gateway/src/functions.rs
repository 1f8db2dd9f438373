//! `wasmgate functions`: the functions a config deploys, as an operator
//! checks them: which module (its version), what triggers them, what they
//! may reach, and the limits they run under once a board's defaults apply.
//!
//! Secrets are shown by name only: a `[functions.secrets]` value, inline or a
//! reference (`{ file = .. }`, `{ env = .. }`, `{ credential = .. }`), is
//! printed as `***`.

use crate::config::{Config, FunctionConfig};
use crate::text::{escape, or_none};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// A module file as the gateway would deploy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The 12-hex-digit prefix of its SHA-256, as `dlq list` and logs show it.
    pub version: String,
    pub bytes: u64,
}

/// Reads a module to name its version; the reason, if it cannot.
pub fn module_info(path: &Path) -> Result<ModuleInfo, String> {
    let wasm = crate::files::read_limited(path, crate::files::MAX_MODULE_BYTES, "module")
        .map_err(|e| e.to_string())?;
    Ok(ModuleInfo {
        version: crate::runtime::module_version(&wasm),
        bytes: wasm.len() as u64,
    })
}

/// Every function of `config`, with its module as `modules` found it (one
/// entry per function, in order).
pub fn render(config: &Config, modules: &[Result<ModuleInfo, String>]) -> String {
    let mut out = String::new();
    for (f, module) in config.functions.iter().zip(modules) {
        let _ = match module {
            Ok(m) => writeln!(
                out,
                "{}  version {} ({} bytes)  {}",
                escape(&f.name),
                m.version,
                m.bytes,
                f.wasm.display()
            ),
            Err(why) => writeln!(
                out,
                "{}  module missing: {} ({why})",
                escape(&f.name),
                f.wasm.display()
            ),
        };
        render_function(&mut out, f);
    }
    out
}

fn render_function(out: &mut String, f: &FunctionConfig) {
    let triggers: Vec<String> = f
        .triggers
        .iter()
        .map(|t| {
            let mut s = match (&t.mqtt, &t.schedule) {
                (Some(filter), _) => match &t.share {
                    Some(group) => format!(
                        "mqtt {} qos{} share {}",
                        escape(filter),
                        t.qos,
                        escape(group)
                    ),
                    None => format!("mqtt {} qos{}", escape(filter), t.qos),
                },
                (None, Some(schedule)) => format!(
                    "schedule {} missed {}",
                    escape(schedule),
                    t.missed.unwrap_or_default()
                ),
                (None, None) => match (&t.http, &t.file) {
                    (Some(route), _) => format!("http {}", escape(route)),
                    (None, Some(pattern)) => format!(
                        "file {} after {}",
                        escape(pattern),
                        match t.after.unwrap_or_default() {
                            crate::config::After::Move => "move",
                            crate::config::After::Delete => "delete",
                        }
                    ),
                    (None, None) => match &t.kv_change {
                        Some(namespace) => format!(
                            "kv_change {} keys {}",
                            escape(namespace),
                            escape(t.keys.as_deref().unwrap_or("*"))
                        ),
                        None => "none".to_owned(),
                    },
                },
            };
            if let Some(key) = &t.dedup_key {
                let _ = write!(s, " dedup_key {}", escape(key));
            }
            if let Some(property) = &t.dedup_property {
                let _ = write!(s, " dedup_property {}", escape(property));
            }
            s
        })
        .collect();
    let _ = writeln!(out, "  triggers  {}", or_none(&triggers, ", "));
    let g = &f.grants;
    let _ = writeln!(
        out,
        "  grants    local {}; upstream {}; invoke {}; secrets {}",
        or_none(&g.local, " "),
        or_none(&g.upstream, " "),
        or_none(&g.invoke, " "),
        or_none(&g.secrets, " ")
    );
    let l = &f.limits;
    let _ = writeln!(
        out,
        "  limits    fuel {}, memory {} MiB, timeout {} ms, concurrency {}, warm {}, queue {}, \
         emits {} of at most {} bytes, kv values {} bytes",
        l.fuel,
        l.memory_mb,
        l.timeout_ms,
        l.concurrency,
        l.warm_instances,
        l.queue,
        l.max_emits,
        l.max_emit_bytes,
        l.max_kv_value_bytes
    );
    let r = &f.retry;
    let _ = writeln!(
        out,
        "  retry     {} attempts, {} ms doubling to {} ms, on {}",
        r.attempts,
        r.initial_backoff_ms,
        r.max_backoff_ms,
        or_none(
            &r.retry_on
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>(),
            " "
        )
    );
    if !f.config.is_empty() {
        let values: Vec<String> = f
            .config
            .iter()
            .map(|(k, v)| format!("{} = {}", escape(k), escape(v)))
            .collect();
        let _ = writeln!(out, "  config    {}", values.join(", "));
    }
    if !f.secrets.is_empty() {
        let names: Vec<String> = f
            .secrets
            .keys()
            .map(|k| format!("{} = ***", escape(k)))
            .collect();
        let _ = writeln!(out, "  secrets   {}", names.join(", "));
    }
}

/// The same as JSON (`--json`); secrets by name only.
pub fn to_json(config: &Config, modules: &[Result<ModuleInfo, String>]) -> Value {
    let functions: Vec<Value> = config
        .functions
        .iter()
        .zip(modules)
        .map(|(f, module)| {
            json!({
                "name": f.name,
                "wasm": f.wasm,
                "version": module.as_ref().ok().map(|m| &m.version),
                "module_bytes": module.as_ref().ok().map(|m| m.bytes),
                "module_error": module.as_ref().err(),
                "triggers": f.triggers,
                "grants": f.grants,
                "limits": f.limits,
                "retry": f.retry,
                "config": f.config,
                "secrets": f.secrets.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(functions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
gateway_id = "t"
data_dir = "data"

[[functions]]
name = "vending"
wasm = "vending.wasm"
triggers = [{ mqtt = "vending/+/telemetry", dedup_key = "msg_id" }, { mqtt = "kiosk/#", share = "site-a" }]

[functions.limits]
fuel = 1234

[functions.grants]
local = ["vending/+/alert"]
secrets = ["api_key", "token", "pin", "cred"]

[functions.config]
max_temp_c = "8"

[functions.secrets]
api_key = "hunter2-inline"
token = { env = "TOKEN_ENV_NAME" }
pin = { file = "pin-file.txt" }
cred = { credential = "cred-name" }
"#;

    fn config() -> Config {
        Config::parse(CONFIG, "gateway.toml").expect("parses")
    }

    #[test]
    fn a_function_shows_its_version_triggers_grants_and_limits() {
        let modules = [Ok(ModuleInfo {
            version: "6f9972598a0d".into(),
            bytes: 77808,
        })];
        let text = render(&config(), &modules);
        assert!(
            text.starts_with("vending  version 6f9972598a0d (77808 bytes)  vending.wasm\n"),
            "{text}"
        );
        assert!(
            text.contains("  triggers  mqtt vending/+/telemetry qos1 dedup_key msg_id, mqtt kiosk/# qos1 share site-a\n"),
            "{text}"
        );
        assert!(
            text.contains("  grants    local vending/+/alert; upstream none; invoke none;"),
            "{text}"
        );
        assert!(text.contains("  limits    fuel 1234, memory "), "{text}");
        assert!(text.contains("  config    max_temp_c = 8\n"), "{text}");
    }

    #[test]
    fn secrets_show_by_name_only() {
        let modules = [Err("No such file or directory".to_owned())];
        let text = render(&config(), &modules);
        let json = to_json(&config(), &modules).to_string();
        for shown in [&text, &json] {
            for secret in [
                "hunter2-inline",
                "TOKEN_ENV_NAME",
                "pin-file.txt",
                "cred-name",
            ] {
                assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
            }
        }
        assert!(
            text.contains("  secrets   api_key = ***, cred = ***, pin = ***, token = ***\n"),
            "{text}"
        );
        assert!(
            text.contains("vending  module missing: vending.wasm"),
            "{text}"
        );
    }
}
