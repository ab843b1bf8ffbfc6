//! The GPU tests, one binary of their own: cargo runs test binaries one after another, so the
//! software adapter's threads never share the CPU with the sandbox's timed tests. Run with
//! `cargo xtask test`.

mod gpu;
mod support;
