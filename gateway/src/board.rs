//! Board profiles: what a gateway board can afford, applied as defaults
//! *under* the user's config.
//!
//! A profile (`boards/<name>.toml`, embedded in the binary) names the Rust
//! target that runs on the board and recommends per-function limits (memory,
//! warm instances, concurrency, queue, deadline) and the store's budgets
//! (SQLite page cache, outbox size). `wasmgate run --board NAME` fills every
//! limit a function's `[functions.limits]` leaves out with the board's value;
//! a limit the config writes always wins, and limits the board says nothing
//! about (fuel, emits, KV value size) keep the gateway's defaults.
//!
//! [`Config`] does not record which fields were written, and rewriting the
//! TOML text would move the lines that config errors point at. So the
//! config is parsed from the user's own text as usual, the keys each
//! `limits` table sets are read from the same text, and the board fills in
//! the rest before validation ([`BoardProfile::config_from_toml_str`]).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigErrors, Limits};

/// The builtin profiles, by name, sorted: `boards/<name>.toml`.
const BUILTIN: [(&str, &str); 5] = [
    (
        "beaglebone-black",
        include_str!("../../boards/beaglebone-black.toml"),
    ),
    (
        "generic-aarch64-musl",
        include_str!("../../boards/generic-aarch64-musl.toml"),
    ),
    ("rpi3-32", include_str!("../../boards/rpi3-32.toml")),
    ("rpi4-64", include_str!("../../boards/rpi4-64.toml")),
    ("rpi5-64", include_str!("../../boards/rpi5-64.toml")),
];

/// The smallest board RAM a profile may be sized for, in MiB.
const MIN_RAM_MB: u32 = 64;

/// One board: its target and the limits recommended on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// The profile's name: the builtin name, or the file stem of a profile
    /// loaded from a path. Not written in the file.
    #[serde(skip)]
    pub name: String,
    /// The boards this profile is for, for people: SoC, cores, RAM, OS.
    pub description: String,
    /// The Rust target triple of the `wasmgate` binary that runs on the
    /// board, e.g. `aarch64-unknown-linux-gnu`.
    pub target: String,
    /// The RAM (MiB) of the smallest board this profile is sized for.
    pub ram_mb: u32,
    /// Defaults for every function's `[functions.limits]`.
    pub limits: BoardLimits,
    /// Budgets of the durable store.
    pub store: StoreBudget,
}

/// The function limits a board recommends; each is a default under the
/// config's own `[functions.limits]` (see [`crate::config::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardLimits {
    /// Linear memory per instance in MiB (`limits.memory_mb`), 1 to 4096.
    pub memory_mb: u32,
    /// Instances kept instantiated per function (`limits.warm_instances`);
    /// each holds its memory while idle.
    pub warm_instances: u32,
    /// Invocations of one function running at once (`limits.concurrency`);
    /// at most about the board's core count.
    pub concurrency: u32,
    /// Events queued per function (`limits.queue`), at least 1; beyond it
    /// the broker holds messages.
    pub queue: u32,
    /// Wall-clock deadline per invocation in ms (`limits.timeout_ms`), at
    /// least 1: slower cores need more time for the same fuel.
    pub timeout_ms: u64,
}

/// What the durable store may use on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreBudget {
    /// SQLite page cache per connection in KiB, at least 64
    /// (see [`StoreBudget::cache_size_pragma`]).
    pub sqlite_cache_kib: u32,
    /// Most the durable outbox may hold on disk while the uplink is down, in
    /// MiB, at least 1 (see [`StoreBudget::outbox_budget_bytes`]).
    pub outbox_budget_mb: u32,
}

impl StoreBudget {
    /// The value for `PRAGMA cache_size`: negative, so SQLite reads it as KiB.
    pub const fn cache_size_pragma(&self) -> i64 {
        -(self.sqlite_cache_kib as i64)
    }

    /// `outbox_budget_mb` in bytes.
    pub const fn outbox_budget_bytes(&self) -> u64 {
        self.outbox_budget_mb as u64 * 1024 * 1024
    }
}

/// A board profile that cannot be found, read or used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No builtin profile has this name.
    #[error(
        "unknown board {name:?}: known boards are {}; or give the path of a board profile (.toml)",
        known.join(", ")
    )]
    Unknown {
        /// The name asked for.
        name: String,
        /// The builtin names.
        known: Vec<&'static str>,
    },
    /// The profile file cannot be read.
    #[error("cannot read the board profile {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The profile is not valid TOML or does not fit the schema.
    #[error("board profile {name:?} is not valid")]
    Parse {
        /// The profile.
        name: String,
        /// The TOML error, with its line.
        #[source]
        source: toml::de::Error,
    },
    /// The profile parses but recommends something the gateway cannot use.
    #[error("board profile {name:?}: {}", problems.join("; "))]
    Invalid {
        /// The profile.
        name: String,
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl BoardProfile {
    /// The names of the builtin profiles, sorted.
    pub fn names() -> impl ExactSizeIterator<Item = &'static str> {
        BUILTIN.iter().map(|(name, _)| *name)
    }

    /// The builtin profile called `name`, if there is one.
    pub fn builtin(name: &str) -> Option<BoardProfile> {
        let (name, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        // Every builtin profile parses and validates: see the tests below.
        Some(Self::from_toml_str(text, name).expect("builtin board profiles are valid"))
    }

    /// What `--board` takes: a builtin name, or else the path of a profile
    /// file (anything with a `/` or ending in `.toml`). An unknown name is an
    /// error that lists the builtin names.
    pub fn find(name_or_path: &str) -> Result<BoardProfile, BoardError> {
        if let Some(profile) = Self::builtin(name_or_path) {
            return Ok(profile);
        }
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            return Self::load(name_or_path);
        }
        Err(BoardError::Unknown {
            name: name_or_path.to_owned(),
            known: Self::names().collect(),
        })
    }

    /// Reads, parses and validates the profile at `path`; its name is the
    /// file stem.
    pub fn load(path: impl AsRef<Path>) -> Result<BoardProfile, BoardError> {
        let path = path.as_ref();
        let text = crate::config::read_config_text(path).map_err(|source| BoardError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into(),
        );
        Self::from_toml_str(&text, &name)
    }

    /// Parses and validates a profile called `name`.
    pub fn from_toml_str(text: &str, name: &str) -> Result<BoardProfile, BoardError> {
        let mut profile: BoardProfile =
            toml::from_str(text).map_err(|source| BoardError::Parse {
                name: name.to_owned(),
                source,
            })?;
        profile.name = name.to_owned();
        profile.validate()?;
        Ok(profile)
    }

    /// Checks that the gateway accepts the profile's limits (the ranges of
    /// config validation), that one function at these limits fits in a
    /// quarter of the board's RAM, and that the store budgets are usable.
    pub fn validate(&self) -> Result<(), BoardError> {
        let mut problems = Vec::new();
        if self.description.trim().is_empty() {
            problems.push("description: must not be empty".to_owned());
        }
        if self.target.split('-').count() < 3 || self.target.contains(char::is_whitespace) {
            problems.push(format!(
                "target: {:?} is not a target triple such as \"aarch64-unknown-linux-gnu\"",
                self.target
            ));
        }
        if self.ram_mb < MIN_RAM_MB {
            problems.push(format!(
                "ram_mb: {} is too small: must be at least {MIN_RAM_MB}",
                self.ram_mb
            ));
        }

        // The ranges are config validation's own: run a function with these
        // limits through it, as a user's config would be.
        let check = format!(
            "[[functions]]\nname = \"board-check\"\nwasm = \"board-check.wasm\"\n\
             triggers = [{{ mqtt = \"board/check\" }}]\n[functions.limits]\n{}",
            self.limits.to_toml()
        );
        if let Err(errors) = Config::from_toml_str(&check, &self.name) {
            problems.extend(errors.iter().map(|e| {
                let path = e.path.to_string();
                let field = path.strip_prefix("functions[0].").unwrap_or(&path);
                format!("{field}: {}", e.kind)
            }));
        }

        let instances = u64::from(self.limits.concurrency.max(self.limits.warm_instances));
        let footprint = u64::from(self.limits.memory_mb) * instances;
        if footprint > u64::from(self.ram_mb / 4) {
            problems.push(format!(
                "limits: one function's instances may use {footprint} MiB \
                 (memory_mb x max(concurrency, warm_instances)), more than a quarter of ram_mb = {}",
                self.ram_mb
            ));
        }
        if self.store.sqlite_cache_kib < 64 {
            problems.push(format!(
                "store.sqlite_cache_kib: {} is too small: must be at least 64",
                self.store.sqlite_cache_kib
            ));
        } else if u64::from(self.store.sqlite_cache_kib) > u64::from(self.ram_mb) * 1024 / 8 {
            problems.push(format!(
                "store.sqlite_cache_kib: {} KiB is more than an eighth of ram_mb = {}",
                self.store.sqlite_cache_kib, self.ram_mb
            ));
        }
        if self.store.outbox_budget_mb == 0 {
            problems.push("store.outbox_budget_mb: must be at least 1".to_owned());
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(BoardError::Invalid {
                name: self.name.clone(),
                problems,
            })
        }
    }

    /// Parses config `text` with this board's limits as defaults under it,
    /// then validates: [`Config::from_toml_str`] for `--board`. Errors point
    /// at the lines of `text`, as without a board.
    pub fn config_from_toml_str(
        &self,
        text: &str,
        source_name: &str,
    ) -> Result<Config, ConfigErrors> {
        let mut config = Config::parse(text, source_name)?;
        self.apply_defaults(&mut config, text);
        config.validate()?;
        Ok(config)
    }

    /// Reads the config file at `path` as [`crate::config::load`] does,
    /// with this board's defaults for what it leaves out.
    pub fn load_config(
        &self,
        path: impl AsRef<Path>,
        needs: crate::config::Needs,
    ) -> Result<Config, ConfigErrors> {
        crate::config::load(path.as_ref(), needs, |config, text| {
            self.apply_defaults(config, text)
        })
    }

    /// Sets this board's limits on every function of `config` that `text`
    /// (the TOML that `config` was parsed from) leaves them out of. Limits
    /// the text writes, in `[functions.limits]` or an inline `limits = {..}`,
    /// are kept. Pure: no validation, no I/O.
    pub fn apply_defaults(&self, config: &mut Config, text: &str) {
        let explicit = explicit_limit_keys(text);
        for (i, function) in config.functions.iter_mut().enumerate() {
            let keys = explicit.get(i).cloned().unwrap_or_default();
            self.limits.apply_under(&mut function.limits, &keys);
        }
        // The board's outbox budget, unless the text sets one.
        let budget_set = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("store")?.as_table()?.get("outbox_max_mb").cloned())
            .is_some();
        if !budget_set {
            config.store.outbox_max_mb = self.store.outbox_budget_mb;
        }
    }
}

impl BoardLimits {
    /// The limits as the lines of a `[functions.limits]` table.
    pub fn to_toml(&self) -> String {
        format!(
            "memory_mb = {}\nwarm_instances = {}\nconcurrency = {}\nqueue = {}\ntimeout_ms = {}\n",
            self.memory_mb, self.warm_instances, self.concurrency, self.queue, self.timeout_ms
        )
    }

    /// Sets each limit this board recommends on `limits`, except those whose
    /// config key (`memory_mb`, ...) is in `explicit`.
    pub fn apply_under(&self, limits: &mut Limits, explicit: &BTreeSet<String>) {
        let absent = |key: &str| !explicit.contains(key);
        if absent("memory_mb") {
            limits.memory_mb = self.memory_mb;
        }
        if absent("warm_instances") {
            limits.warm_instances = self.warm_instances;
        }
        if absent("concurrency") {
            limits.concurrency = self.concurrency;
        }
        if absent("queue") {
            limits.queue = self.queue;
        }
        if absent("timeout_ms") {
            limits.timeout_ms = self.timeout_ms;
        }
    }
}

/// The keys each `[[functions]]` table's `limits` sets in `text`, in the
/// order of the functions; an empty set for a function without `limits`.
/// Empty if `text` does not parse (config parsing reports that).
fn explicit_limit_keys(text: &str) -> Vec<BTreeSet<String>> {
    let Ok(root) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let Some(toml::Value::Array(functions)) = root.get("functions") else {
        return Vec::new();
    };
    functions
        .iter()
        .map(|function| match function.get("limits") {
            // `min_warm` is `warm_instances` by another name.
            Some(toml::Value::Table(limits)) => limits
                .keys()
                .map(|k| match k.as_str() {
                    "min_warm" => "warm_instances".to_owned(),
                    _ => k.clone(),
                })
                .collect(),
            _ => BTreeSet::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default config of the Debian package, /etc/wasmgate/gateway.toml.
    const DEB_CONFIG: &str = include_str!("../../boards/deb/gateway.toml");

    #[track_caller]
    fn board(name: &str) -> BoardProfile {
        BoardProfile::builtin(name).unwrap_or_else(|| panic!("no builtin board {name:?}"))
    }

    #[track_caller]
    fn config_on(board: &BoardProfile, text: &str) -> Config {
        board
            .config_from_toml_str(text, "gateway.toml")
            .unwrap_or_else(|e| panic!("config does not load on {}:\n{e}", board.name))
    }

    fn limits_toml(limits: &BoardLimits) -> String {
        format!(
            "[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{{ mqtt = \"a/#\" }}]\n\
             [functions.limits]\n{}",
            limits.to_toml()
        )
    }

    const TWO_FUNCTIONS: &str = r#"
[[functions]]
name = "tuned"
wasm = "tuned.wasm"
triggers = [{ mqtt = "a/#" }]
[functions.limits]
memory_mb = 4
queue = 10
fuel = 1000

[[functions]]
name = "plain"
wasm = "plain.wasm"
triggers = [{ mqtt = "b/#" }]
"#;

    #[test]
    fn every_builtin_profile_parses_and_validates() {
        assert!(BoardProfile::names().len() >= 5);
        for name in BoardProfile::names() {
            let text = BUILTIN.iter().find(|(n, _)| *n == name).unwrap().1;
            let profile = BoardProfile::from_toml_str(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(profile.name, name);
            assert!(profile.store.outbox_budget_bytes() >= 1 << 20);
            assert!(profile.store.cache_size_pragma() < 0);
        }
    }

    #[test]
    fn every_builtin_profiles_limits_pass_config_validation() {
        for name in BoardProfile::names() {
            let profile = board(name);
            let text = limits_toml(&profile.limits);
            let config = Config::from_toml_str(&text, &format!("{name} limits"))
                .unwrap_or_else(|e| panic!("{name}'s limits are rejected by config:\n{e}"));
            let limits = config.functions[0].limits;
            assert_eq!(limits.memory_mb, profile.limits.memory_mb);
            assert_eq!(limits.timeout_ms, profile.limits.timeout_ms);
        }
    }

    #[test]
    fn every_profile_file_in_boards_is_builtin() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, BoardProfile::names().collect::<Vec<_>>());
    }

    #[test]
    fn builtin_profiles_target_the_triples_cross_build_makes() {
        let script = include_str!("../../boards/cross-build.sh");
        for name in BoardProfile::names() {
            let target = board(name).target;
            assert!(
                script.contains(&target),
                "{name}: {target} is not built by cross-build.sh"
            );
        }
    }

    #[test]
    fn board_fills_the_limits_the_config_leaves_out() {
        let pi = board("rpi4-64");
        let config = config_on(&pi, TWO_FUNCTIONS);
        let plain = config.function("plain").unwrap().1.limits;
        assert_eq!(plain.memory_mb, pi.limits.memory_mb);
        assert_eq!(plain.warm_instances, pi.limits.warm_instances);
        assert_eq!(plain.concurrency, pi.limits.concurrency);
        assert_eq!(plain.queue, pi.limits.queue);
        assert_eq!(plain.timeout_ms, pi.limits.timeout_ms);
        // What boards say nothing about keeps the gateway's defaults.
        assert_eq!(plain.fuel, Limits::DEFAULT.fuel);
        assert_eq!(plain.max_emits, Limits::DEFAULT.max_emits);
    }

    #[test]
    fn users_limits_win_over_board_defaults() {
        let bbb = board("beaglebone-black");
        let config = config_on(&bbb, TWO_FUNCTIONS);
        let tuned = config.function("tuned").unwrap().1.limits;
        assert_eq!(tuned.memory_mb, 4);
        assert_eq!(tuned.queue, 10);
        assert_eq!(tuned.fuel, 1000);
        // The rest of the same table comes from the board.
        assert_eq!(tuned.concurrency, bbb.limits.concurrency);
        assert_eq!(tuned.timeout_ms, bbb.limits.timeout_ms);
    }

    #[test]
    fn users_inline_limits_win_too() {
        let text = r#"
[[functions]]
name = "f"
wasm = "f.wasm"
triggers = [{ mqtt = "a/#" }]
limits = { warm_instances = 0, timeout_ms = 50 }
"#;
        let pi = board("rpi5-64");
        let limits = config_on(&pi, text).functions[0].limits;
        assert_eq!(limits.warm_instances, 0);
        assert_eq!(limits.timeout_ms, 50);
        assert_eq!(limits.memory_mb, pi.limits.memory_mb);
    }

    #[test]
    fn min_warm_is_warm_instances_and_wins_over_the_board_as_well() {
        let text = r#"
[[functions]]
name = "f"
wasm = "f.wasm"
triggers = [{ mqtt = "a/#" }]
limits = { min_warm = 3, concurrency = 4 }
"#;
        let pi = board("rpi5-64");
        assert_ne!(pi.limits.warm_instances, 3);
        assert_eq!(config_on(&pi, text).functions[0].limits.warm_instances, 3);
    }

    #[test]
    fn without_a_board_the_gateway_defaults_stay() {
        let config = Config::from_toml_str(TWO_FUNCTIONS, "gateway.toml").unwrap();
        assert_eq!(config.function("plain").unwrap().1.limits, Limits::DEFAULT);
    }

    #[test]
    fn config_errors_still_point_at_the_users_lines() {
        let text =
            "\n[[functions]]\nname = \"f\"\nwasm = \"f.wasm\"\ntriggers = [{ mqtt = \"a/#\" }]\n\
                    [functions.limits]\nmemory_mb = 0\n";
        let errors = board("rpi3-32")
            .config_from_toml_str(text, "gateway.toml")
            .unwrap_err();
        assert_eq!(
            errors.to_string(),
            "gateway.toml:7: functions[0].limits.memory_mb: 0 is out of range: must be between 1 and 4096"
        );
    }

    #[test]
    fn unknown_board_name_gives_an_error_listing_the_known_ones() {
        let error = BoardProfile::find("rpi9").unwrap_err();
        assert!(matches!(error, BoardError::Unknown { .. }));
        let message = error.to_string();
        assert!(message.starts_with("unknown board \"rpi9\""), "{message}");
        for name in BoardProfile::names() {
            assert!(message.contains(name), "{message} does not list {name}");
        }
        assert!(BoardProfile::builtin("rpi9").is_none());
    }

    #[test]
    fn find_takes_a_builtin_name_or_a_profile_path() {
        assert_eq!(BoardProfile::find("rpi4-64").unwrap(), board("rpi4-64"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my-gateway.toml");
        let text = BUILTIN[0]
            .1
            .replace("timeout_ms = 4000", "timeout_ms = 9000");
        std::fs::write(&path, text).unwrap();
        let profile = BoardProfile::find(path.to_str().unwrap()).unwrap();
        assert_eq!(profile.name, "my-gateway");
        assert_eq!(profile.limits.timeout_ms, 9000);

        let missing = BoardProfile::find(dir.path().join("nope.toml").to_str().unwrap());
        assert!(matches!(missing, Err(BoardError::Read { .. })));
    }

    #[test]
    fn a_profile_with_an_unknown_field_is_rejected() {
        let text = format!("{}\nswap_mb = 100\n", BUILTIN[3].1);
        let error = BoardProfile::from_toml_str(&text, "typo").unwrap_err();
        assert!(matches!(error, BoardError::Parse { .. }), "{error}");
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("swap_mb"), "{source}");
    }

    #[test]
    fn a_profile_outside_the_configs_ranges_is_rejected_with_every_problem() {
        let text = BUILTIN[3]
            .1
            .replace("memory_mb = 32", "memory_mb = 0")
            .replace("queue = 1024", "queue = 0");
        let error = BoardProfile::from_toml_str(&text, "broken").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("limits.memory_mb: 0 is out of range"),
            "{message}"
        );
        assert!(
            message.contains("limits.queue: 0 is out of range"),
            "{message}"
        );
    }

    #[test]
    fn a_profile_whose_functions_would_not_fit_its_ram_is_rejected() {
        let text = BUILTIN[0].1.replace("memory_mb = 8", "memory_mb = 512");
        let message = BoardProfile::from_toml_str(&text, "greedy")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("more than a quarter of ram_mb"),
            "{message}"
        );
    }

    #[test]
    fn the_debian_packages_config_validates_and_uses_installed_paths() {
        let config = Config::from_toml_str(DEB_CONFIG, "/etc/wasmgate/gateway.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.data_dir, Path::new("/var/lib/wasmgate"));
        assert!(!config.functions.is_empty());
        for function in &config.functions {
            assert!(
                function.wasm.starts_with("/usr/share/wasmgate/functions/"),
                "{}: {}",
                function.name,
                function.wasm.display()
            );
        }
        assert_eq!(
            config.functions[0].wasm,
            Path::new("/usr/share/wasmgate/functions/vending_telemetry.wasm")
        );
    }

    #[test]
    fn the_debian_packages_config_leaves_the_board_limits_to_the_board() {
        for name in BoardProfile::names() {
            let profile = board(name);
            let config = config_on(&profile, DEB_CONFIG);
            assert_eq!(
                config.functions[0].limits.memory_mb,
                profile.limits.memory_mb
            );
            assert_eq!(config.functions[0].limits.queue, profile.limits.queue);
        }
    }
}
