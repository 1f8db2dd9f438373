//! Gateway configuration (TOML): parse, then validate, reporting every problem.
