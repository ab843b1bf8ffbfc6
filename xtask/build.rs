//! No build step. This file exists so that the `[build-dependencies]` in Cargo.toml take part in
//! feature resolution: see the comment there.
fn main() {}
