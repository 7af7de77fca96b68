//! The interpreter (being written).

/// The interpreter engine.
#[derive(Debug, Default)]
pub struct Interpreter {}
