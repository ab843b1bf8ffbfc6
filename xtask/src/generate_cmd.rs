//! `cargo xtask generate` and `cargo xtask eval`: rollouts of a model folder on a data set.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use rstar2_backend::Policy;
use rstar2_model::{Config, DecodeWeights, Model, Params, Tokenizer};
use rstar2_rollout::engine::policy_engine;
use rstar2_rollout::{ChatFormat, Episode, RolloutConfig, SamplingConfig, generate};
use rstar2_sandbox::IsolationKind;

use rstar2_train::config::EvalConfig;
use rstar2_train::{eval, progress};

/// Arguments of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// HF model folder (config.json, tokenizer.json, safetensors; chat.json if trained here).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL problems (question in prompt/problem/question; answer optional), or a data set
    /// name: gsm8k, math500, math-train (after `cargo xtask fetch-data`).
    #[arg(long)]
    pub data: String,
    /// Episodes per problem.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Where to write one episode per line.
    #[arg(long)]
    pub out: PathBuf,
    /// auto, cpu, gpu or gpu:N; a comma-separated list (gpu:0,gpu:1,cpu) makes one engine per
    /// device, and the scheduler spreads the episodes over them.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weights decoding reads: bf16 (on CPUs with AMX tiles or AVX-512 BF16 dot products; the
    /// default where those are faster than f32 arithmetic, as on Sapphire Rapids and Zen 4), f16
    /// (half the bytes per token; the default on other CPUs and on GPUs with SHADER_F16) or
    /// f32.
    #[arg(long)]
    pub decode_weights: Option<DecodeWeights>,
    /// Response budget in tokens, tool output included.
    #[arg(long, default_value_t = 8192)]
    pub max_tokens: usize,
    /// Assistant turns at most.
    #[arg(long, default_value_t = 10)]
    pub max_turns: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Where the Python tool's interpreters live: in-process (threads of this process, the
    /// lowest latency) or process (worker processes, which can be killed).
    #[arg(long, default_value_t = IsolationKind::InProcess)]
    pub isolation: IsolationKind,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// HF model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL problems with answers; a data set name: gsm8k, math500, math-train (after `cargo
    /// xtask fetch-data`); or `synthetic` for the built-in held-out split.
    #[arg(long)]
    pub data: String,
    /// n: samples per problem; pass@1 is averaged over them, and pass@k is reported for
    /// k = 1, 2, 4, 8 up to n (the unbiased estimator of Chen et al. 2021).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Difficulty levels of the synthetic problems.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub levels: Vec<u8>,
    /// Problems at most, the first of the file (synthetic: how many to generate).
    #[arg(long, alias = "problems", default_value_t = 96)]
    pub limit: usize,
    /// Without the tool: no tool section in the system prompt and no call executed, to show
    /// what the tool is worth.
    #[arg(long)]
    pub no_tool: bool,
    /// Score the last `\boxed{}` anywhere in the response, not only inside <answer>...</answer>
    /// (the rStar2 format): for models not trained on that format.
    #[arg(long)]
    pub anywhere: bool,
    /// The chat format: a chat.json, or a training config (TOML) whose [chat] is taken, e.g. to
    /// evaluate a model before training in the format its recipe trains it in. Default: the
    /// model folder's chat.json, else the original rStar2 format.
    #[arg(long)]
    pub chat: Option<PathBuf>,
    /// auto, cpu, gpu or gpu:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weights decoding reads: bf16 (on CPUs with AMX tiles or AVX-512 BF16 dot products; the
    /// default where those are faster than f32 arithmetic, as on Sapphire Rapids and Zen 4), f16
    /// (half the bytes per token; the default on other CPUs and on GPUs with SHADER_F16) or
    /// f32.
    #[arg(long)]
    pub decode_weights: Option<DecodeWeights>,
    /// Response budget in tokens, tool output included.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Assistant turns at most.
    #[arg(long, default_value_t = 6)]
    pub max_turns: u32,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f32,
    /// Where the Python tool's interpreters live: in-process (threads of this process, the
    /// lowest latency) or process (worker processes, which can be killed).
    #[arg(long, default_value_t = IsolationKind::InProcess)]
    pub isolation: IsolationKind,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub struct Loaded {
    /// One per device, the first being the one `eval` uses.
    pub policies: Vec<Policy>,
    pub tokenizer: Tokenizer,
    pub chat: ChatFormat,
}

/// A model folder with its tokenizer and chat format (chat.json when the folder was written by
/// `train`, else the original rStar2 format).
pub fn load_model(dir: &Path, devices: &str, decode_weights: Option<DecodeWeights>) -> anyhow::Result<Loaded> {
    let config = Config::from_file(&dir.join("config.json")).with_context(|| format!("model folder {}", dir.display()))?;
    let params = Params::load(dir, &config)?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let chat = match std::fs::read_to_string(dir.join("chat.json")) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}/chat.json", dir.display()))?,
        Err(_) => ChatFormat::rstar2(),
    };
    let mut policies = Vec::new();
    for spec in devices.split(',') {
        let device = rstar2_train::open_device(spec.trim())?;
        let mut policy = Policy::new(&device, Model::new(config.clone(), params.clone()), None);
        let weights = decode_weights.unwrap_or_else(|| policy.default_decode_weights());
        policy.set_decode_weights(weights)?;
        let stored = policy.stored_decode_weights(weights);
        if stored == weights {
            eprintln!("{}: decoding reads {} weights", spec.trim(), weights.name());
        } else {
            eprintln!("{}: decoding reads {} weights ({} asked for: bf16 needs AMX or AVX-512 BF16)", spec.trim(), stored.name(), weights.name());
        }
        policies.push(policy);
    }
    Ok(Loaded { policies, tokenizer, chat })
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let data = rstar2_tasks::real::resolve(&args.data, &crate::test_cmd::workspace_root())?;
    let loaded = load_model(&args.model, &args.device, args.decode_weights)?;
    let (requests, skipped) = rstar2_tasks::jsonl::load_requests(&data)?;
    for s in &skipped {
        eprintln!("{}: line {} skipped: {}", data.display(), s.line, s.reason);
    }
    if requests.is_empty() {
        bail!("{}: no problems to generate for", data.display());
    }
    let config = RolloutConfig {
        chat: loaded.chat.clone(),
        sampling: SamplingConfig { temperature: args.temperature, top_p: 1.0, top_k: 0 },
        samples: args.samples,
        max_response_tokens: args.max_tokens,
        max_turns: args.max_turns,
        seed: args.seed,
        ..RolloutConfig::default()
    };
    let sandbox = rstar2_train::sandbox(true, args.isolation)?;
    let bar = progress::bar((requests.len() * args.samples) as u64, "episodes");
    let on_episode = |_: &Episode, tokens: usize| {
        bar.inc(1);
        bar.set_message(format!("{:.0} tok/s", tokens as f64 / bar.elapsed().as_secs_f64().max(1e-3)));
    };
    let mut engines: Vec<_> =
        loaded.policies.iter().map(|p| policy_engine(p, rstar2_train::replicas::kv_capacity(p, &requests, &loaded.tokenizer, &loaded.chat, args.max_tokens, args.samples))).collect();
    let engine_refs: Vec<&mut dyn rstar2_rollout::engine::Engine> = engines.iter_mut().map(|e| -> &mut dyn rstar2_rollout::engine::Engine { &mut **e }).collect();
    let out = generate(engine_refs, &loaded.tokenizer, &sandbox, &requests, &config, Some(&on_episode))?;
    bar.finish_and_clear();
    let mut text = Vec::new();
    for e in &out.episodes {
        serde_json::to_writer(&mut text, e)?;
        text.push(b'\n');
    }
    rstar2_model::write_atomic(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    let m = &out.metrics;
    println!(
        "{} episodes -> {}: {:.0} tokens/s, {} tool calls ({:.1}/s, waited {:.1}s in all), finish {:?}{}",
        m.episodes,
        args.out.display(),
        m.tokens_per_second,
        m.tool_calls,
        m.tool_calls_per_second,
        m.tool_wait_seconds,
        m.finish_reasons,
        match out.episodes.iter().filter_map(|e| e.reward).collect::<Vec<_>>() {
            r if r.is_empty() => String::new(),
            r => format!(", mean reward {:.3}", r.iter().sum::<f32>() / r.len() as f32),
        }
    );
    let _ = std::io::stdout().flush();
    print_gpu_profiles(&loaded.policies);
    Ok(())
}

/// With `RSTAR2_GPU_PROFILE=1`: each GPU's time per kernel family, on stderr.
pub fn print_gpu_profiles(policies: &[Policy]) {
    #[cfg(feature = "gpu")]
    for report in policies.iter().filter_map(Policy::gpu).filter_map(|g| g.profile_report()) {
        eprintln!("{report}");
    }
    #[cfg(not(feature = "gpu"))]
    let _ = policies;
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let tasks = if args.data == "synthetic" {
        rstar2_tasks::synth::generate(
            &rstar2_tasks::synth::SynthConfig { levels: args.levels.clone(), ..Default::default() },
            rstar2_tasks::synth::Split::Test,
            args.limit,
            rstar2_tasks::synth::HELD_OUT_SEED,
        )?
    } else {
        let data = rstar2_tasks::real::resolve(&args.data, &crate::test_cmd::workspace_root())?;
        let (tasks, skipped) = rstar2_tasks::jsonl::load_jsonl(&data)?;
        for s in &skipped {
            eprintln!("{}: line {} skipped: {}", data.display(), s.line, s.reason);
        }
        if !skipped.is_empty() {
            eprintln!("{}: {} rows skipped, never scored", data.display(), skipped.len());
        }
        tasks.into_iter().take(args.limit).collect()
    };
    if tasks.is_empty() {
        bail!("{}: no problems with answers to evaluate", args.data);
    }
    let loaded = load_model(&args.model, &args.device, args.decode_weights)?;
    let sandbox = rstar2_train::sandbox(rstar2_train::is_real_data(&args.data), args.isolation)?;
    let chat = match &args.chat {
        Some(path) if path.extension().is_some_and(|e| e == "toml") => rstar2_train::config::TrainConfig::load(Some(path))?.chat,
        Some(path) => {
            serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?).with_context(|| format!("{} is not a chat format", path.display()))?
        }
        None => loaded.chat.clone(),
    };
    let chat = if args.no_tool { chat.without_tool() } else { chat };
    let config = EvalConfig { samples: args.samples, temperature: args.temperature, max_response_tokens: args.max_tokens, max_turns: args.max_turns, answer_anywhere: args.anywhere };
    let mut replicas = rstar2_train::Replicas::new(loaded.policies, Box::new(rstar2_train::collective::Alone));
    let r = eval::evaluate(&mut replicas, &loaded.tokenizer, &sandbox, &chat, &tasks, &config, args.seed, "")?;
    println!("{}", serde_json::to_string(&r)?);
    eprintln!(
        "pass@1 {:.3} ± {:.3} (n={} samples each, {} problems{}), tool calls/episode {:.2}, tool-error ratio {:.2}, response {:.0} tokens",
        r.pass_at_1,
        r.stderr,
        r.k,
        r.problems,
        if args.no_tool { ", no tool" } else { "" },
        r.tool_calls_per_episode,
        r.tool_error_ratio,
        r.response_tokens
    );
    eprintln!("{}", eval::describe_pass_at_k(&r));
    if r.per_kind.len() > 1 {
        eprintln!("by kind: {}", r.per_kind.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", "));
        let top = r.pass_at_k.keys().last().copied().unwrap_or(1);
        eprintln!("pass@{top} by kind: {}", r.per_kind_pass_at_k.iter().map(|(k, v)| format!("{k} {:.3}", v[&top])).collect::<Vec<_>>().join(", "));
    }
    if !r.per_level.is_empty() {
        eprintln!("by level: {}", r.per_level.iter().map(|(k, v)| format!("{k}: {v:.3}")).collect::<Vec<_>>().join(", "));
    }
    print_gpu_profiles(replicas.policies());
    Ok(())
}
