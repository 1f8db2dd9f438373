//! wasmgate: serverless functions for edge gateways.
