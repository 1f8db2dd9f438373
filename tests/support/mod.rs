//! Harness for the end-to-end tests: real brokers, the real `wasmgate`
//! binary, plain MQTT clients. Shared by `tests/pipeline.rs` and the
//! gateway crate's own integration tests, so not every test uses every piece.
#![allow(dead_code)]

pub mod gateway;
pub mod mosquitto;
pub mod mqtt;
pub mod rig;
