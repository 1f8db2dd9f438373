//! The fuzzers' corpora (`fuzz/corpus/`) replayed as ordinary tests, so CI
//! (stable, no libFuzzer) still checks every input that once found a bug or
//! reached new code: the config parser and the envelope decoder must answer
//! each with a value or an error, never a panic. Fuzzing itself is not run
//! in CI; see `fuzz/README.md`.

use std::path::PathBuf;
use wasmgate::config::Config;
use wasmgate_abi::{Envelope, Event};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[test]
fn config_corpus_parses_or_reports_errors() {
    for (path, bytes) in corpus("config") {
        // libFuzzer's `&str` inputs are the valid UTF-8 ones.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Err(errors) = Config::from_toml_str(text, "fuzz.toml") {
            assert!(!errors.to_string().is_empty(), "{}", path.display());
        }
    }
}

#[test]
fn the_default_config_in_the_corpus_is_valid() {
    let text = Config::default_toml();
    Config::from_toml_str(text, "default.toml").expect("default config is valid");
}

#[test]
fn envelope_corpus_decodes_or_reports_errors() {
    let mut decoded = 0;
    for (path, bytes) in corpus("envelope") {
        if let Ok(envelope) = Envelope::decode(&bytes) {
            decoded += 1;
            if let Event::Batch(items) = envelope.event {
                for item in items.iter() {
                    if item.is_err() {
                        break;
                    }
                }
            }
            let again = envelope.encode().expect("encodes");
            assert_eq!(
                Envelope::decode(&again).ok(),
                Some(envelope),
                "{}",
                path.display()
            );
        }
    }
    assert!(decoded > 0, "the seeds from the example events decode");
}
