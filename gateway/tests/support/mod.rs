//! Helpers shared by the integration tests. Each test file that needs them
//! says `mod support;`; not every file uses every helper.
#![allow(dead_code)]

pub mod mosquitto;
