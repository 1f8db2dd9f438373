//! `wasmgate apply`: what differs between the running config and a file,
//! as a plan. Pure: the gateway adds what only it knows (which module
//! versions `live` would move between) and carries it out.
//!
//! What a plan can change live is a function: added, removed, or changed
//! (module, limits, grants, config values and secrets move its `live`
//! alias, as a deploy does; triggers, concurrency, queue, retries and dead
//! letters restart that function's triggers and workers). Everything else
//! (`data_dir`, the broker, the upstream link, the store, the HTTP
//! listener, the management API's listener, the gateway id) is read once at start: a plan that changes it
//! is refused whole, naming each field, since a restart is needed.

use crate::config::{Config, FunctionConfig};

/// What happens to one function.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Change {
    Add {
        function: String,
    },
    /// Its in-flight work finishes; its messages wait at the broker under
    /// its session.
    Remove {
        function: String,
    },
    Change {
        function: String,
        /// The fields that differ (`limits.fuel`, `triggers`, `module`).
        fields: Vec<String>,
        /// Its triggers and workers restart (else only `live` moves).
        restart: bool,
        /// `live`'s versions before and after, when they differ.
        #[serde(skip_serializing_if = "Option::is_none")]
        versions: Option<(Vec<String>, Vec<String>)>,
    },
}

impl Change {
    pub fn function(&self) -> &str {
        match self {
            Change::Add { function } | Change::Remove { function } => function,
            Change::Change { function, .. } => function,
        }
    }
}

/// The difference between what runs and a file.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Fields that differ but are read only at start.
    pub restart_needed: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.restart_needed.is_empty()
    }

    /// The plan as lines for a terminal, like a Terraform plan.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for change in &self.changes {
            lines.push(match change {
                Change::Add { function } => format!("+ function {function}"),
                Change::Remove { function } => format!(
                    "- function {function} (its in-flight work finishes; its messages wait at the broker)"
                ),
                Change::Change {
                    function,
                    fields,
                    restart,
                    versions,
                } => {
                    let mut line = format!("~ function {function}: {}", fields.join(", "));
                    if let Some((from, to)) = versions {
                        line.push_str(&format!("; live {} -> {}", from.join("+"), to.join("+")));
                    }
                    line.push_str(if *restart {
                        " (its triggers and workers restart)"
                    } else {
                        " (live moves; nothing restarts)"
                    });
                    line
                }
            });
        }
        for field in &self.restart_needed {
            lines.push(format!(
                "! {field}: cannot change while the gateway runs; restart it (systemctl restart wasmgate)"
            ));
        }
        if lines.is_empty() {
            lines.push("no changes".to_owned());
        }
        lines
    }
}

/// Compares the running config with a new one.
pub fn diff(running: &Config, new: &Config) -> Plan {
    let mut plan = Plan {
        restart_needed: restart_needed(running, new),
        ..Plan::default()
    };
    for f in &new.functions {
        match running.functions.iter().find(|r| r.name == f.name) {
            None => plan.changes.push(Change::Add {
                function: f.name.clone(),
            }),
            Some(r) if r != f => {
                let fields = changed_fields(r, f);
                plan.changes.push(Change::Change {
                    function: f.name.clone(),
                    restart: needs_restart(r, f),
                    fields,
                    versions: None,
                });
            }
            Some(_) => {}
        }
    }
    for r in &running.functions {
        if !new.functions.iter().any(|f| f.name == r.name) {
            plan.changes.push(Change::Remove {
                function: r.name.clone(),
            });
        }
    }
    plan
}

/// Whether a change needs the function's triggers and workers restarted:
/// they are built from these at start; the rest is in the version `live`
/// runs.
pub fn needs_restart(running: &FunctionConfig, new: &FunctionConfig) -> bool {
    running.triggers != new.triggers
        || running.limits.concurrency != new.limits.concurrency
        || running.limits.queue != new.limits.queue
        || running.retry != new.retry
        || running.dead_letters != new.dead_letters
}

/// The fields of a function that differ, by their config names.
fn changed_fields(running: &FunctionConfig, new: &FunctionConfig) -> Vec<String> {
    let mut fields = Vec::new();
    if running.wasm != new.wasm {
        fields.push("wasm".to_owned());
    }
    if running.triggers != new.triggers {
        fields.push("triggers".to_owned());
    }
    fields.extend(leaf_diff(
        "limits",
        &to_value(&running.limits),
        &to_value(&new.limits),
    ));
    if running.grants != new.grants {
        fields.push("grants".to_owned());
    }
    if running.config != new.config {
        fields.push("config".to_owned());
    }
    if running.secrets != new.secrets {
        fields.push("secrets".to_owned());
    }
    if running.retry != new.retry {
        fields.push("retry".to_owned());
    }
    if running.dead_letters != new.dead_letters {
        fields.push("dead_letters".to_owned());
    }
    fields
}

/// Fields outside `functions` that differ: each is read only at start.
fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut fields = Vec::new();
    if running.gateway_id != new.gateway_id {
        fields.push("gateway_id".to_owned());
    }
    if running.data_dir != new.data_dir {
        fields.push("data_dir".to_owned());
    }
    section(&mut fields, "broker", &running.broker, &new.broker);
    section(&mut fields, "upstream", &running.upstream, &new.upstream);
    section(&mut fields, "store", &running.store, &new.store);
    section(&mut fields, "http", &running.http, &new.http);
    section(&mut fields, "api", &running.api, &new.api);
    section(&mut fields, "metrics", &running.metrics, &new.metrics);
    section(&mut fields, "logs", &running.logs, &new.logs);
    section(&mut fields, "tracing", &running.tracing, &new.tracing);
    section(&mut fields, "bundles", &running.bundles, &new.bundles);
    section(&mut fields, "fleet", &running.fleet, &new.fleet);
    fields
}

/// The fields of a section that differ, by their dotted paths.
fn section<T: PartialEq + serde::Serialize>(
    fields: &mut Vec<String>,
    name: &str,
    old: &T,
    new: &T,
) {
    if old == new {
        return;
    }
    let leaves = leaf_diff(name, &to_value(old), &to_value(new));
    // Where the JSON shows no leaf that differs (a value that does not
    // serialize), the section is named.
    if leaves.is_empty() {
        fields.push(name.to_owned());
    }
    fields.extend(leaves);
}

/// A value as JSON; one that cannot be (a path that is not UTF-8) is null.
pub(super) fn to_value(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// The dotted paths of the leaves that differ between two JSON values.
fn leaf_diff(path: &str, old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    leaf_diff(
                        &format!("{path}.{k}"),
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    )
                })
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        _ => vec![path.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        data_dir = "/var/lib/wasmgate"
        [broker]
        listen = "127.0.0.1:1883"
        [[functions]]
        name = "vending"
        wasm = "vending.wasm"
        triggers = [{ mqtt = "vending/+/telemetry" }]
        [[functions]]
        name = "audit"
        wasm = "audit.wasm"
        triggers = [{ mqtt = "audit/#" }]
    "#;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, "gateway.toml").unwrap()
    }

    #[test]
    fn the_same_file_plans_nothing() {
        let plan = diff(&config(BASE), &config(BASE));
        assert!(plan.is_empty());
        assert_eq!(plan.lines(), ["no changes"]);
    }

    #[test]
    fn functions_added_removed_and_changed_are_each_named() {
        let new = BASE
            .replace("name = \"audit\"", "name = \"ledger\"")
            .replace(
                "wasm = \"vending.wasm\"",
                "wasm = \"vending.wasm\"\n        limits = { fuel = 5000000 }",
            );
        let plan = diff(&config(BASE), &config(&new));
        assert!(plan.restart_needed.is_empty());
        assert_eq!(
            plan.changes,
            [
                Change::Change {
                    function: "vending".into(),
                    fields: vec!["limits.fuel".into()],
                    restart: false,
                    versions: None,
                },
                Change::Add {
                    function: "ledger".into()
                },
                Change::Remove {
                    function: "audit".into()
                },
            ]
        );
        let lines = plan.lines();
        assert_eq!(
            lines[0],
            "~ function vending: limits.fuel (live moves; nothing restarts)"
        );
        assert_eq!(lines[1], "+ function ledger");
        assert!(lines[2].starts_with("- function audit"));
    }

    #[test]
    fn a_trigger_or_a_worker_setting_restarts_the_function() {
        let triggers = BASE.replace("vending/+/telemetry", "vending/+/status");
        let queue = BASE.replace(
            "wasm = \"audit.wasm\"",
            "wasm = \"audit.wasm\"\n        limits = { queue = 64 }",
        );
        for (new, field) in [(triggers, "triggers"), (queue, "limits.queue")] {
            let plan = diff(&config(BASE), &config(&new));
            let [Change::Change {
                fields, restart, ..
            }] = plan.changes.as_slice()
            else {
                panic!("{plan:?}");
            };
            assert_eq!(fields, &[field.to_owned()]);
            assert!(restart, "{field}");
        }
    }

    #[test]
    fn what_is_read_at_start_is_named_as_needing_a_restart() {
        let new = BASE
            .replace("/var/lib/wasmgate", "/srv/wasmgate")
            .replace("127.0.0.1:1883", "127.0.0.1:1884");
        let plan = diff(&config(BASE), &config(&new));
        assert_eq!(plan.restart_needed, ["data_dir", "broker.listen"]);
        assert!(plan.changes.is_empty());
        assert!(plan.lines()[1].contains("broker.listen: cannot change while the gateway runs"));
        // Tracing is started with the gateway too.
        let traced = format!("{BASE}\n[tracing]\nendpoint = \"http://collector:4318/v1/traces\"\n");
        assert_eq!(
            diff(&config(BASE), &config(&traced)).restart_needed,
            ["tracing"]
        );
    }
}
