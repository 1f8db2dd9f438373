//! Nothing here: `tests/` checks the built modules in `../wasm/` against the
//! ABI (imports, exports, signatures) and runs them under wasmi, the engine
//! the gateway uses, with a small host written from the ABI README.
