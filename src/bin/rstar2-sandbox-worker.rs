//! A sandbox worker process: `rstar2-sandbox-worker __rstar2-sandbox-worker '<config json>'`.
//! Started by [`rstar2::sandbox::Sandbox`] in process isolation; not meant to be run by hand.

fn main() {
    rstar2::sandbox::worker::dispatch_worker();
    eprintln!(
        "rstar2-sandbox-worker is started by the sandbox pool (argument {})",
        rstar2::sandbox::worker::WORKER_ARG
    );
    std::process::exit(2);
}
