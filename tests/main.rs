//! Workspace integration tests, one binary. Run with `cargo xtask test`.

mod gguf;
mod gpu;
mod model;
mod sandbox;
