//! Workspace integration tests, one binary. Run with `cargo xtask test`.

mod model;
mod sandbox;
