//! Topic filters to functions.
