//! `cargo xtask bench kernels`: the GPU benchmark of `rstar2_gpu::bench` (also built alone as
//! `rstar2-gpu-bench` for machines without a Rust toolchain).

#[derive(clap::Args)]
pub struct KernelBenchArgs {
    /// Adapter index from `cargo xtask devices`; default: the first real GPU, else the first
    /// adapter (a software one gives CPU-emulation figures, useful only as a smoke test).
    #[arg(long)]
    adapter: Option<usize>,
    /// The card's fp32 peak in GFLOP/s, to print compute-bound kernels as a share of it
    /// (default: from a table of known cards, when the adapter is one).
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// The card's memory bandwidth in GB/s, to print memory-bound kernels and decoding against
    /// it (default: from the same table).
    #[arg(long)]
    peak_gbs: Option<f64>,
    /// Shapes: `small` (what a software adapter finishes in a minute) or `full`; default: full
    /// on a real GPU, small otherwise.
    #[arg(long)]
    size: Option<String>,
    /// GPU time per kernel family from timestamp queries (where the adapter has them; host
    /// times otherwise), printed after the tables. `RSTAR2_GPU_PROFILE=1` does the same for
    /// any command.
    #[arg(long)]
    profile: bool,
    /// Rounds, each measuring every row on both sides one after the other; figures print as
    /// the median with the min-max over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[cfg(not(feature = "gpu"))]
pub fn run(_: KernelBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench kernels measures the GPU backend: this build has none (built without the `gpu` feature)")
}

#[cfg(feature = "gpu")]
pub fn run(args: KernelBenchArgs) -> anyhow::Result<()> {
    let bench = rstar2_gpu::bench::BenchArgs { adapter: args.adapter, peak_gflops: args.peak_gflops, peak_gbs: args.peak_gbs, size: args.size, profile: args.profile, rounds: Some(args.rounds) };
    rstar2_gpu::bench::run(&bench, &crate::test_cmd::workspace_root()).map_err(|e| anyhow::anyhow!("{e}"))
}
