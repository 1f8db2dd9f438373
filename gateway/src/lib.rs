//! wasmgate: serverless functions for edge gateways.
//!
//! The modules follow the data flow in `DESIGN.md`: broker -> ingress ->
//! router -> dispatch -> runtime -> store (group commit) -> outbox -> broker
//! (`pipeline`, `store`), with config, boards, the local test loop, the
//! simulator, the load tool and metrics beside it.

pub mod admin;
pub mod bench;
pub mod board;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod bundle;
pub mod config;
pub mod control;
pub mod cost;
pub mod custom_metrics;
pub mod dashboard;
pub mod demo;
pub mod dlq;
pub mod event;
pub mod examples;
pub mod files;
pub mod fleet;
pub mod functions;
pub mod histogram;
pub mod local;
pub mod metrics;
pub mod mqtt;
#[cfg(feature = "embedded-broker")]
pub mod passwords;
pub mod pipeline;
pub mod registry;
pub mod rollout;
pub mod router;
pub mod runtime;
pub mod scaffold;
pub mod scrape;
pub mod simulate;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod text;
#[cfg(feature = "tls")]
pub mod tls;
pub mod trace;
pub mod triggers;
pub mod usage;

pub use pipeline::{run, run_from, Gateway, GatewayError, Source};
