//! A sandbox worker process: `rstar2-sandbox-worker __rstar2-sandbox-worker '<config json>'`.
//! Started by [`rstar2::sandbox::Sandbox`] in process isolation; not meant to be run by hand.

/// In-process tool calls are held to their memory limit by counting their allocations.
#[global_allocator]
static ALLOC: rstar2::sandbox::BudgetAllocator = rstar2::sandbox::BudgetAllocator;

fn main() {
    rstar2::sandbox::worker::dispatch_worker();
    eprintln!("rstar2-sandbox-worker is started by the sandbox pool (argument {})", rstar2::sandbox::worker::WORKER_ARG);
    std::process::exit(2);
}
