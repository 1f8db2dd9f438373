//! The config parser and validator on arbitrary text: every input must end
//! in a `Config` or in errors, never in a panic, and an accepted config must
//! be usable as the gateway uses it (router built from its triggers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::config::Config;

fuzz_target!(|text: &str| {
    match Config::parse(text, "fuzz.toml") {
        Err(errors) => {
            // What `config check` prints, line numbers and all.
            let shown = errors.to_string();
            assert!(!shown.is_empty());
        }
        Ok(config) => match config.validate() {
            Err(errors) => {
                let _ = errors.to_string();
            }
            Ok(()) => {
                // Validation promised the filters are valid: every trigger routes.
                let router = config.router();
                let triggers: usize = config.functions.iter().map(|f| f.triggers.len()).sum();
                assert!(router.len() <= triggers);
                assert!(triggers == 0 || !router.is_empty());
                let _ = config.broker_client_id();
                let _ = config.upstream_client_id();
                let _ = format!("{config:?}");
            }
        },
    }
});
