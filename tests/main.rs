//! Workspace integration tests, one binary. Run with `cargo xtask test`.

/// In-process tool calls are held to their memory limit by counting their allocations.
#[global_allocator]
static ALLOC: rstar2::sandbox::BudgetAllocator = rstar2::sandbox::BudgetAllocator;

mod gguf;
mod model;
mod nesting;
mod queue;
mod sandbox;
mod support;
mod tasks;
