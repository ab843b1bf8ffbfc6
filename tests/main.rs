//! Workspace integration tests, one binary. Run with `cargo xtask test`.

mod gguf;
mod model;
mod queue;
mod sandbox;
mod support;
