//! `cargo xtask bench train-scaling`: what data parallelism buys on this machine. Tokens/s of a
//! training step (forward, backward, gradient exchange, AdamW) with one replica and with the
//! replicas of `--devices`, the host's gradient exchange per MiB, and (built with the `mpi`
//! feature, `mpirun` installed) MPI all-reduce per MiB over the loopback interface beside a
//! memory copy of the same buffer, all measured in this run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar2_model::timing::{in_rounds, median_secs, show, show_ratio};
use rstar2_model::{AdamW, AdamWConfig, Config, Model, Params};
use rstar2_tasks::sft::SftExample;
use rstar2_train::Replicas;
use rstar2_train::collective::Alone;

#[derive(clap::Args)]
pub struct TrainScalingArgs {
    /// HF model folder whose config.json gives the shape (random weights).
    #[arg(long, default_value = "models/tiny")]
    pub model: PathBuf,
    /// The data-parallel row's devices (the first alone is the baseline row).
    #[arg(long, default_value = "cpu,cpu")]
    pub devices: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub tokens: usize,
    /// Steps timed per row in each round (their median is the round's figure).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Rounds: each measures both rows, one after the other.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

pub fn run(args: TrainScalingArgs) -> anyhow::Result<()> {
    let dir = rstar2_train::paths::resolve(&args.model);
    let config = Config::from_file(&dir.join("config.json")).with_context(|| format!("model folder {}", dir.display()))?;
    let params = Params::random(&config, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let examples: Vec<SftExample> =
        (0..args.batch).map(|_| SftExample { tokens: (0..args.tokens).map(|_| rng.random_range(0..config.vocab_size as u32)).collect(), mask: vec![1; args.tokens] }).collect();
    let part: Vec<&SftExample> = examples.iter().collect();
    let count = (args.batch * (args.tokens - 1)) as f64;
    let tokens = (args.batch * args.tokens) as f64;
    let count_params = params.data.iter().map(Vec::len).sum::<usize>();
    let mib = count_params as f64 * 4.0 / (1 << 20) as f64;
    println!(
        "train-scaling: {} ({:.2} M parameters, {mib:.1} MiB of gradients), {} x {} tokens per step, median of {} steps per round, {}",
        dir.display(),
        count_params as f64 / 1e6,
        args.batch,
        args.tokens,
        args.steps,
        rstar2_model::cpu::cpu_name()
    );
    let first = args.devices.split(',').next().unwrap_or("cpu").to_string();
    let specs = [first.as_str(), args.devices.as_str()];
    let mut setups = Vec::new();
    for spec in specs {
        let devices = rstar2_train::open_devices(spec)?;
        let policies =
            devices.iter().map(|d| rstar2_train::training_policy(d, Model::new(config.clone(), params.clone()), AdamW::new(AdamWConfig::default(), &params))).collect::<anyhow::Result<Vec<_>>>()?;
        let mut replicas = Replicas::new(policies, Box::new(Alone));
        // Warm-up: the first step also sizes the shares by measured speed.
        replicas.step(&part, |e| e.tokens.len(), |p, share, g| rstar2_train::sft_share(p, share, count, g), 1.0, 1e-4);
        setups.push((devices.len(), replicas));
    }
    // Both rows in every round, one right after the other (see `timing::in_rounds`).
    let [(_, one), (_, several)] = &mut setups[..] else { unreachable!("two rows") };
    let rate = |replicas: &mut Replicas| {
        tokens
            / median_secs(args.steps, || {
                replicas.step(&part, |e| e.tokens.len(), |p, share, g| rstar2_train::sft_share(p, share, count, g), 1.0, 1e-4);
            })
    };
    let (one, several) = in_rounds(args.rounds, || rate(one), || rate(several));
    let rates = [one, several];
    println!("{} rounds, the rows alternating; median (min-max) over rounds, the ratio taken within each round", args.rounds);
    println!("{:<28} {:>32} {:>26}", "replicas", "tokens/s", "vs one");
    for ((n, _), (spec, row)) in setups.iter().zip(specs.iter().zip(&rates)) {
        println!("{:<28} {:>32} {:>26}", format!("{n} ({spec})"), show(row, 0, ""), show_ratio(row, &rates[0]));
    }
    // What a step with several replicas adds: gradients to the host, summed, sent back.
    let devices = rstar2_train::open_devices(&args.devices)?;
    let policy = rstar2_train::training_policy(&devices[devices.len() - 1], Model::new(config.clone(), params.clone()), AdamW::new(AdamWConfig::default(), &params))?;
    let secs = median_secs(args.steps, || {
        let host = policy.grads_to_host(policy.zero_grads());
        let mut sum = host.clone();
        sum.data.iter_mut().zip(&host.data).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += y));
        std::hint::black_box(policy.grads_from_host(sum));
    });
    println!("host gradient exchange ({}): {:.3} ms per MiB of gradients ({:.1} ms per step here)", args.devices.split(',').next_back().unwrap_or("cpu"), secs * 1e3 / mib, secs * 1e3);
    mpi_row();
    Ok(())
}

/// MPI all-reduce over loopback, from a 2-rank job of this binary (`bench allreduce-probe`).
fn mpi_row() {
    if !cfg!(feature = "mpi") {
        println!("MPI all-reduce: not measured (this binary was built without the mpi feature: cargo build --release -p xtask --features mpi)");
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return println!("MPI all-reduce: not measured ({e})"),
    };
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-n", "2", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"])
        .arg(exe)
        .args(["bench", "allreduce-probe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output();
    match out {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => println!("MPI all-reduce: the probe job failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => println!("MPI all-reduce: not measured (mpirun: {e}; Debian: openmpi-bin)"),
    }
}

/// One rank of the probe job: all-reduce of 64 MiB of f32 (the bucket size) over the job,
/// median of 5, beside a copy of the same buffer in memory. Rank 0 prints.
pub fn allreduce_probe() -> anyhow::Result<()> {
    let comm = rstar2_train::collective::from_environment();
    anyhow::ensure!(comm.size() > 1, "allreduce-probe runs as one rank of an MPI job (mpirun -n 2 ...), built with the mpi feature");
    let n = rstar2_train::collective::BUCKET_FLOATS;
    let mut data = vec![1.0f32; n];
    comm.all_reduce_sum_f32(&mut data); // warm-up: connections
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        comm.all_reduce_sum_f32(&mut data);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let src = vec![2.0f32; n];
    let copy = median_secs(5, || data.copy_from_slice(&src));
    if comm.rank() == 0 {
        let mib = (n * 4) as f64 / (1 << 20) as f64;
        println!(
            "MPI all-reduce, {} ranks over loopback TCP, {mib:.0} MiB buckets: {:.2} ms per MiB ({:.2} GB/s); a memory copy of the same buffer: {:.3} ms per MiB ({:.0}x faster)",
            comm.size(),
            times[2] * 1e3 / mib,
            (n * 4) as f64 / times[2] / 1e9,
            copy * 1e3 / mib,
            times[2] / copy
        );
    }
    Ok(())
}
