//! wasmgate: serverless functions for edge gateways.
//!
//! The modules follow the data flow in `DESIGN.md`: config -> router ->
//! runtime (-> commit -> outbox -> uplink as they land).

pub mod config;
pub mod event;
pub mod local;
pub mod router;
pub mod runtime;
