//! `cargo xtask train` and `cargo xtask compare`: the command line of [`rstar2_train`].

use std::path::PathBuf;

use clap::Args;
use rstar2_train::config::Algo;
use rstar2_train::{TrainOptions, Trainer};

/// Arguments of `cargo xtask train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Training config (TOML); fields it leaves out come from the embedded default
    /// (configs/tiny.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A config shipped in configs/ by name (smollm2-135m); same as --config configs/NAME.toml.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// An HF model folder (config.json, tokenizer.json, safetensors) to start from instead of
    /// the tiny preset trained from scratch.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A JSONL data set (question in prompt/problem/question, answer in answer/solution); a
    /// fifth of it, chosen by a hash of the question, is held out for evaluation.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// auto, cpu, gpu or gpu:N, or a comma-separated list (gpu:0,gpu:1,cpu): one replica per
    /// device, data parallel. Under mpirun, {local_rank} stands for the rank's index on its
    /// machine (gpu:{local_rank}).
    #[arg(long)]
    pub device: Option<String>,
    /// grpo-roc (the paper) or grpo (the ablation: keep all G rollouts).
    #[arg(long, value_enum)]
    pub algo: Option<Algo>,
    /// Run name: the folder runs/<name>.
    #[arg(long)]
    pub name: Option<String>,
    /// Seed for everything stochastic.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue a killed run from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "preset", "model", "data", "device", "algo", "name", "seed"])]
    pub resume: Option<PathBuf>,
    /// Where run folders are created [default: runs/ of the checkout or RSTAR2_HOME].
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Stop (as if killed) after this many RL steps in total; for testing resume.
    #[arg(long, hide = true)]
    pub stop_after_rl_steps: Option<usize>,
    /// Fail with an error after this many RL steps in total; for testing that a failing rank
    /// ends an MPI job.
    #[arg(long, hide = true)]
    pub fail_after_rl_steps: Option<usize>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => Trainer::resume(dir)?,
        None => Trainer::start(&TrainOptions {
            config: args.config,
            preset: args.preset,
            model: args.model,
            data: args.data,
            device: args.device,
            algo: args.algo,
            name: args.name,
            seed: args.seed,
            runs_dir: runs_dir(args.runs_dir),
        })?,
    };
    trainer.fail_after_rl_steps(args.fail_after_rl_steps);
    let result = trainer.run(args.stop_after_rl_steps);
    crate::generate_cmd::print_gpu_profiles(trainer.replicas().policies());
    result
}

/// Arguments of `compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// Run folders (runs/<name>).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the PNG.
    #[arg(long, default_value = "compare.png")]
    pub out: PathBuf,
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    rstar2_train::compare::compare(&args.runs, &args.out)
}

/// Arguments of `replicate`.
#[derive(Args)]
pub struct ReplicateArgs {
    /// Number of seeds: every algorithm runs with seeds 1..=N.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// The algorithms to compare, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "grpo,grpo-roc")]
    pub algos: Vec<Algo>,
    /// Training config (TOML) laid over the embedded default (configs/tiny.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Device of every run: auto, cpu, gpu, gpu:N or a list (as `train --device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Where the study folder (<runs-dir>/<name>) is created [default: runs/ of the checkout or
    /// RSTAR2_HOME].
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// The study's folder name (default: the config's name and "-study", e.g. tiny-study). Run
    /// the same command again to continue a killed study: finished runs are skipped.
    #[arg(long)]
    pub name: Option<String>,
    /// Stop (as if killed) after this many runs finished; for testing resume.
    #[arg(long, hide = true)]
    pub stop_after_runs: Option<usize>,
}

pub fn replicate(args: ReplicateArgs) -> anyhow::Result<()> {
    let mut algos: Vec<Algo> = Vec::new();
    for algo in args.algos {
        if !algos.contains(&algo) {
            algos.push(algo);
        }
    }
    rstar2_train::study::replicate(&rstar2_train::study::StudyOptions {
        config: args.config,
        seeds: args.seeds,
        algos,
        device: args.device,
        runs_dir: runs_dir(args.runs_dir),
        name: args.name,
        stop_after_runs: args.stop_after_runs,
    })?;
    Ok(())
}

/// `--runs-dir` as given (relative to the current directory), else the checkout's `runs/`.
fn runs_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| rstar2_train::paths::workspace_root().join("runs"))
}
