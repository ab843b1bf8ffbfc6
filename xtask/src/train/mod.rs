//! `cargo xtask train`: non-reasoning tool-format SFT, then multi-stage GRPO-RoC, with
//! evaluation before SFT, after SFT and after each RL stage; checkpoints, resume, metrics,
//! plots and a report in `runs/<name>/`.

pub mod compare;
pub mod config;
pub mod eval;
mod plot;
pub mod progress;
mod report;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rstar2_grpo::loss::{Aggregation, LossConfig, RolloutTokens, policy_loss};
use rstar2_grpo::penalty::{tool_error_penalty, total_penalty};
use rstar2_grpo::select::{Candidate, NegativeSelection, PositiveSelection, Selection};
use rstar2_gpu::{Device, Policy};
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, DecodeWeights, LrSchedule, Model, Params, Tokenizer};
use rstar2_rollout::engine::policy_engine;
use rstar2_rollout::{RolloutConfig, SamplingConfig, generate};
use rstar2_sandbox::queue::{QueueClient, QueueConfig};
use rstar2_sandbox::{Sandbox, SandboxConfig, WorkerCommand};
use rstar2_tasks::Task;
use rstar2_tasks::synth::{Split, SynthConfig};
use serde::{Deserialize, Serialize};

use config::{Algo, Init, Positives, TrainConfig};
use eval::{EvalResult, evaluate, kv_capacity, tool_error_ratio};

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
    /// auto, cpu, gpu or gpu:N.
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
    /// Where run folders are created.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Stop (as if killed) after this many RL steps in total; for testing resume.
    #[arg(long, hide = true)]
    pub stop_after_rl_steps: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Sft,
    Rl,
    Done,
}

/// What a checkpoint needs besides weights and optimizer moments. All randomness derives
/// from (seed, phase, step), so no RNG state is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    phase: Phase,
    stage: usize,
    stage_step: usize,
    rl_step: usize,
    adam_step: u64,
    pool: Vec<usize>,
    evals: BTreeMap<String, EvalResult>,
    stages: Vec<report::StageSummary>,
    metric_lines: usize,
    wall_seconds: f64,
}

struct Run {
    dir: PathBuf,
    config: TrainConfig,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    policy: Policy,
    sandbox: Sandbox,
    train: Vec<Task>,
    test: Vec<Task>,
    state: State,
    started: Instant,
    wall_before: f64,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let stop_after = args.stop_after_rl_steps;
    let mut run = match &args.resume {
        Some(dir) => Run::resume(dir)?,
        None => Run::start(&args)?,
    };
    let result = run.execute(stop_after);
    crate::generate_cmd::print_gpu_profiles(std::slice::from_ref(&run.policy));
    result
}

fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut x = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

fn load_tasks(config: &TrainConfig) -> anyhow::Result<(Vec<Task>, Vec<Task>)> {
    let d = &config.data;
    let synth = SynthConfig { levels: d.levels.clone(), ..Default::default() };
    let from = |source: &str, split: Split, count: usize, seed: u64| -> anyhow::Result<Vec<Task>> {
        if source == "synthetic" {
            return Ok(rstar2_tasks::synth::generate(&synth, split, count, seed)?);
        }
        let (path, tasks) = load_file(source)?;
        // One file for both: split it by a hash of the question; two files are their own splits.
        let same_file = d.train == d.test;
        let picked: Vec<Task> = tasks.into_iter().filter(|t| !same_file || rstar2_tasks::synth::split_of(&t.question) == split).take(count).collect();
        if picked.is_empty() {
            bail!("{}: no usable {split:?} problems (rows need a question and an answer)", path.display());
        }
        Ok(picked)
    };
    Ok((from(&d.train, Split::Train, d.train_problems, config.seed)?, from(&d.test, Split::Test, d.test_problems, config.seed)?))
}

/// The problems of a data set given by name (gsm8k, ...) or path, the rows it skipped reported.
fn load_file(source: &str) -> anyhow::Result<(PathBuf, Vec<Task>)> {
    let path = rstar2_tasks::real::resolve(source, &crate::test_cmd::workspace_root())?;
    let (tasks, skipped) = rstar2_tasks::jsonl::load_jsonl(&path)?;
    if !skipped.is_empty() {
        eprintln!("{}: skipped {} rows (first: line {}: {})", path.display(), skipped.len(), skipped[0].line, skipped[0].reason);
    }
    Ok((path, tasks))
}

/// The first `count` problems of a data set given by name or path (for evaluations only).
fn load_named(data: &str, count: usize) -> anyhow::Result<Vec<Task>> {
    let (path, tasks) = load_file(data)?;
    let tasks: Vec<Task> = tasks.into_iter().take(count).collect();
    if tasks.is_empty() {
        bail!("{}: no problems with answers to evaluate", path.display());
    }
    Ok(tasks)
}

/// The tool environment. With `real_math` (runs on a real data set) sympy and mpmath are
/// importable, from target/pylib where `fetch-data` (or the tests) put them, and imported when
/// each worker starts so no call pays the import; without them (nothing is downloaded at run
/// time) it says so and runs without.
pub fn sandbox(real_math: bool) -> anyhow::Result<Sandbox> {
    let mut c = SandboxConfig::process(WorkerCommand::current_exe()?);
    c.workers = c.workers.max(2);
    if real_math {
        let pylib = crate::test_cmd::pylib_dir();
        if crate::test_cmd::has_pylib(&pylib) {
            c.interpreter.pylib = Some(pylib);
            c.interpreter.preload = vec!["sympy".into(), "mpmath".into()];
        } else {
            eprintln!("note: the tool environment has no sympy/mpmath ({} is empty; `cargo xtask fetch-data math` puts them there)", pylib.display());
        }
    }
    Ok(Sandbox::new(c)?)
}

/// The tool environment of a training run: [`sandbox`], or the Redis queue `[sandbox] redis`
/// names (checked to answer now).
pub fn run_tools(config: &TrainConfig) -> anyhow::Result<Sandbox> {
    let Some(uri) = &config.sandbox.redis else { return sandbox(config.data.uses_real_data()) };
    let mut queue = QueueConfig::new(uri.clone());
    if let Some(prefix) = &config.sandbox.key_prefix {
        queue.key_prefix = prefix.clone();
    }
    let client = QueueClient::connect(queue).context("[sandbox] redis")?;
    let (queued, workers) = client.status().context("[sandbox] redis")?;
    println!("tools: code-judge queue {} at {uri} ({workers} workers registered, {queued} items waiting)", client.config().work_queue());
    if workers == 0 {
        eprintln!("note: no worker is registered on {uri} yet; tool calls wait for one (`cargo xtask sandbox worker --redis {uri}`)");
    }
    Ok(Sandbox::queue(client))
}

/// Whether a data set is a real one (not the built-in synthetic problems).
pub fn is_real_data(data: &str) -> bool {
    data != "synthetic"
}

impl Run {
    fn start(args: &TrainArgs) -> anyhow::Result<Run> {
        let preset = match &args.preset {
            Some(name) => {
                let path = crate::test_cmd::workspace_root().join("configs").join(format!("{name}.toml"));
                if !path.exists() {
                    bail!("no preset {name:?}: {} does not exist", path.display());
                }
                Some(path)
            }
            None => None,
        };
        let config_file = preset.as_deref().or(args.config.as_deref());
        let mut config = TrainConfig::load(config_file)?;
        if let Some(m) = &args.model {
            config.model = m.clone();
            config.init = Init::Pretrained;
            // A real model keeps its own chat format (chat.json when trained here, else the
            // original rStar2 one) unless the config file sets [chat].
            if !config::sets_table(config_file, "chat")? {
                config.chat = match std::fs::read_to_string(m.join("chat.json")) {
                    Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}/chat.json", m.display()))?,
                    Err(_) => rstar2_rollout::ChatFormat::rstar2(),
                };
            }
            if args.name.is_none() {
                config.name = m.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
            }
        }
        if let Some(d) = &args.data {
            config.data.train = d.display().to_string();
            config.data.test = d.display().to_string();
        }
        if let Some(d) = &args.device {
            config.device = d.clone();
        }
        if let Some(a) = args.algo {
            config.algo = a;
        }
        if let Some(n) = &args.name {
            config.name = n.clone();
        }
        if let Some(s) = args.seed {
            config.seed = s;
        }
        config.validate()?;
        let device = open_device(&config.device)?;
        let model_dir = resolve(&config.model);
        let model_config = Config::from_file(&model_dir.join("config.json")).with_context(|| format!("model folder {}", model_dir.display()))?;
        let tokenizer_path = model_dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path).with_context(|| format!("model folder {}", model_dir.display()))?;
        let params = match config.init {
            Init::Random => Params::random(&model_config, config.seed),
            Init::Pretrained => Params::load(&model_dir, &model_config).with_context(|| {
                let name = model_dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
                format!("loading the weights of {} (for a known model: cargo xtask fetch-model {name})", model_dir.display())
            })?,
        };
        let (train, test) = load_tasks(&config)?;
        let dir = fresh_dir(&args.runs_dir, &config.name)?;
        std::fs::write(dir.join("config.toml"), toml::to_string(&config)?)?;
        let optimizer = AdamW::new(AdamWConfig::default(), &params);
        println!("rstar2 train: run folder {}", dir.display());
        println!("settings (saved to {}):\n{}", dir.join("config.toml").display(), toml::to_string(&config)?);
        println!(
            "model: {} ({:.2} M parameters, {} layers, vocab {}), {} train / {} test problems, algo {:?}",
            model_dir.display(),
            params.data.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
            model_config.num_hidden_layers,
            model_config.vocab_size,
            train.len(),
            test.len(),
            config.algo
        );
        let policy = training_policy(&device, Model::new(model_config, params), optimizer)?;
        let state = State { phase: Phase::Sft, stage: 0, stage_step: 0, rl_step: 0, adam_step: 0, pool: Vec::new(), evals: BTreeMap::new(), stages: Vec::new(), metric_lines: 0, wall_seconds: 0.0 };
        let sandbox = run_tools(&config)?;
        Ok(Run { dir, config, tokenizer, tokenizer_path, policy, sandbox, train, test, state, started: Instant::now(), wall_before: 0.0 })
    }

    fn resume(dir: &Path) -> anyhow::Result<Run> {
        let text = std::fs::read_to_string(dir.join("config.toml")).with_context(|| format!("{} is not a run folder (no config.toml)", dir.display()))?;
        let config: TrainConfig = toml::from_str(&text).with_context(|| format!("{}/config.toml", dir.display()))?;
        let ckpt = [dir.join("checkpoint"), dir.join("checkpoint.old")].into_iter().find(|p| p.join("state.json").exists()).with_context(|| format!("{} has no checkpoint to resume from", dir.display()))?;
        let state: State = serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json"))?)?;
        let model_config = Config::from_file(&ckpt.join("config.json"))?;
        let params = Params::load(&ckpt, &model_config)?;
        let mut optimizer = AdamW::new(AdamWConfig::default(), &params);
        optimizer.m = Params::load(&ckpt.join("optimizer_m"), &model_config)?;
        optimizer.v = Params::load(&ckpt.join("optimizer_v"), &model_config)?;
        optimizer.step = state.adam_step;
        let tokenizer_path = ckpt.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        // Metrics written after the checkpoint are produced again.
        let metrics = dir.join("metrics.jsonl");
        let kept: Vec<String> = std::fs::read_to_string(&metrics).unwrap_or_default().lines().take(state.metric_lines).map(str::to_string).collect();
        rstar2_model::write_atomic(&metrics, kept.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes())?;
        let (train, test) = load_tasks(&config)?;
        let device = open_device(&config.device)?;
        println!("rstar2 train: resuming {} at {:?} stage {} step {}", dir.display(), state.phase, state.stage + 1, state.stage_step);
        let wall_before = state.wall_seconds;
        let sandbox = run_tools(&config)?;
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            tokenizer_path,
            policy: training_policy(&device, Model::new(model_config, params), optimizer)?,
            sandbox,
            train,
            test,
            state,
            started: Instant::now(),
            wall_before,
        })
    }

    fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    fn execute(&mut self, stop_after: Option<usize>) -> anyhow::Result<()> {
        if self.state.phase == Phase::Sft {
            if !self.state.evals.contains_key("before_sft") {
                self.eval_into("before_sft")?;
            }
            self.sft()?;
            self.eval_into("after_sft")?;
            self.state.phase = Phase::Rl;
            self.policy.reset_optimizer();
            self.checkpoint()?;
        }
        while self.state.phase == Phase::Rl {
            if self.state.stage >= self.config.rl.stages.len() {
                self.state.phase = Phase::Done;
                break;
            }
            if self.state.stage_step == 0 && self.state.pool.is_empty() {
                self.begin_stage()?;
            }
            let stage = self.config.rl.stages[self.state.stage].clone();
            let bar = progress::bar(stage.steps as u64, &format!("RL stage {}", self.state.stage + 1));
            bar.set_position(self.state.stage_step as u64);
            while self.state.stage_step < stage.steps {
                if stop_after.is_some_and(|n| self.state.rl_step >= n) {
                    bar.abandon();
                    println!("stopped after {} RL steps (--stop-after-rl-steps)", self.state.rl_step);
                    return Ok(());
                }
                let m = self.rl_step(&stage)?;
                bar.inc(1);
                bar.set_message(format!("reward {:.2} kept {} err+ {:.2} {:.0} tok/s", m.reward_mean, m.kept_rollouts, m.positive_tool_error_ratio, m.tokens_per_second));
                self.state.stage_step += 1;
                self.state.rl_step += 1;
                if self.state.stage_step % self.config.rl.checkpoint_every == 0 && self.state.stage_step < stage.steps {
                    self.checkpoint()?;
                }
            }
            bar.finish_and_clear();
            let label = format!("after_rl_stage{}", self.state.stage + 1);
            self.eval_into(&label)?;
            self.state.stages.push(report::StageSummary::new(self.state.stage + 1, &stage, &self.dir.join("metrics.jsonl"), self.state.evals[&label].clone()));
            self.state.stage += 1;
            self.state.stage_step = 0;
            self.state.pool.clear();
            self.checkpoint()?;
        }
        for data in self.config.data.also_test.clone() {
            let label = format!("final_{}", Path::new(&data).file_stem().map_or(data.clone(), |s| s.to_string_lossy().into_owned()));
            if !self.state.evals.contains_key(&label) {
                let tasks = load_named(&data, self.config.data.test_problems)?;
                self.eval_on(&label, &tasks)?;
            }
        }
        let final_dir = self.dir.join("model");
        self.save_model(&final_dir)?;
        let summary = report::write(&self.dir, &self.config, &self.state.evals, &self.state.stages, self.wall())?;
        println!("{summary}");
        Ok(())
    }

    fn eval_into(&mut self, label: &str) -> anyhow::Result<()> {
        let test = std::mem::take(&mut self.test);
        let result = self.eval_on(label, &test);
        self.test = test;
        result
    }

    fn eval_on(&mut self, label: &str, tasks: &[Task]) -> anyhow::Result<()> {
        let seed = mix_seed(self.config.seed, 0xe7a1, self.state.evals.len() as u64);
        self.policy.refresh_decode_weights()?;
        let r = evaluate(&self.policy, &self.tokenizer, &self.sandbox, &self.config.chat, tasks, &self.config.eval, seed, label)?;
        println!(
            "eval {label:<18} pass@1 {:.3} ± {:.3} (k={}, {} problems)  tool calls/ep {:.2}  tool errors {:.2} (in correct: {:.2})  length {:.0}",
            r.pass_at_1, r.stderr, r.k, r.problems, r.tool_calls_per_episode, r.tool_error_ratio, r.positive_tool_error_ratio, r.response_tokens
        );
        self.append_metrics(&serde_json::json!({"phase": "eval", "label": label, "rl_step": self.state.rl_step, "eval": r}))?;
        self.state.evals.insert(label.to_string(), r);
        Ok(())
    }

    fn append_metrics(&mut self, line: &serde_json::Value) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("metrics.jsonl"))?;
        writeln!(f, "{line}")?;
        self.state.metric_lines += 1;
        Ok(())
    }

    fn sft(&mut self) -> anyhow::Result<()> {
        let c = self.config.sft.clone();
        if c.epochs == 0 || c.examples == 0 {
            return Ok(());
        }
        let mut tasks: Vec<Task> = self.train.iter().filter(|t| t.code.is_some() && c.levels.contains(&t.level)).take(c.examples).cloned().collect();
        if tasks.is_empty() {
            // A real data set has no code solutions to build traces from: the format SFT (the
            // tool-call and answer format, not math) uses synthetic problems of sft.levels.
            let synth = SynthConfig { levels: c.levels.clone(), ..Default::default() };
            tasks = rstar2_tasks::synth::generate(&synth, Split::Train, c.examples, mix_seed(self.config.seed, 0x5f7, 1))?;
            println!("SFT on {} synthetic problems' tool-format traces (the RL data has no code solutions)", tasks.len());
        }
        let traces = rstar2_tasks::sft::build_traces(&tasks, &self.sandbox, &self.config.chat, &c.mix, mix_seed(self.config.seed, 0x5f7, 0))?;
        let examples: Vec<_> = traces.iter().map(|t| t.tokenize(&self.tokenizer)).collect();
        let steps_per_epoch = examples.len().div_ceil(c.batch_size);
        let total = (steps_per_epoch * c.epochs) as u64;
        let schedule = LrSchedule { lr: c.lr, warmup_steps: ((total as f32 * c.warmup_fraction).ceil() as u64).max(1), cosine_total_steps: Some(total), min_ratio: 0.0 };
        let bar = progress::bar(total, "SFT");
        let mut step = 0u64;
        for epoch in 0..c.epochs {
            let mut order: Vec<usize> = (0..examples.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(self.config.seed, 0x5f7, epoch as u64 + 1)));
            for chunk in order.chunks(c.batch_size) {
                let t0 = Instant::now();
                let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| examples[i].tokens.clone()).collect();
                let batch = Batch::new(&seqs);
                let mut targets = Vec::with_capacity(batch.len());
                let mut mask = Vec::with_capacity(batch.len());
                for &i in chunk {
                    let e = &examples[i];
                    for t in 0..e.tokens.len() {
                        let next = t + 1 < e.tokens.len();
                        targets.push(if next { e.tokens[t + 1] } else { 0 });
                        mask.push(if next { f32::from(e.mask[t + 1]) } else { 0.0 });
                    }
                }
                let (acts, lp) = self.policy.forward_logprobs(&batch, &targets);
                let (loss, dlogprob) = rstar2_model::ops::logprob::cross_entropy(&lp, &mask);
                let mut grads = self.policy.zero_grads();
                self.policy.backward(&acts, &dlogprob, &mut grads);
                let lr = schedule.at(step);
                let norm = self.policy.clip_and_step(&mut grads, 1.0, lr);
                let tokens = batch.len();
                let secs = t0.elapsed().as_secs_f64();
                bar.inc(1);
                bar.set_message(format!("epoch {} loss {loss:.3} {:.0} tok/s", epoch + 1, tokens as f64 / secs));
                self.append_metrics(&serde_json::json!({"phase": "sft", "step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens, "tokens_per_second": tokens as f64 / secs, "step_seconds": secs}))?;
                step += 1;
            }
        }
        bar.finish_and_clear();
        println!("SFT: {} traces x {} epochs, {} steps in {:.0}s", examples.len(), c.epochs, step, bar.elapsed().as_secs_f64());
        Ok(())
    }

    /// Chooses the stage's problems (stage-3 filtering when configured) and resets the optimizer.
    fn begin_stage(&mut self) -> anyhow::Result<()> {
        let stage = self.config.rl.stages[self.state.stage].clone();
        let mut pool: Vec<usize> = (0..self.train.len()).collect();
        pool.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(self.config.seed, 0x9001, self.state.stage as u64)));
        if self.state.stage > 0 {
            self.policy.reset_optimizer();
        }
        if let Some(f) = stage.filter_solved {
            pool.truncate(f.problems.max(1));
            let tasks: Vec<Task> = pool.iter().map(|&i| self.train[i].clone()).collect();
            let eval_config = config::EvalConfig { samples: f.samples, temperature: self.config.rl.temperature, max_response_tokens: stage.max_response_tokens, max_turns: stage.max_turns, answer_anywhere: false };
            let seed = mix_seed(self.config.seed, 0xf117, self.state.stage as u64);
            let rollout = self.rollout_config(&stage, f.samples, seed);
            let requests: Vec<_> = tasks.iter().map(Task::request).collect();
            let bar = progress::bar((requests.len() * f.samples) as u64, "filter solved");
            let on = |_: &rstar2_rollout::Episode, _: usize| bar.inc(1);
            self.policy.refresh_decode_weights()?;
            let mut engine = policy_engine(&self.policy, kv_capacity(&self.policy, &requests, &self.tokenizer, &self.config.chat, eval_config.max_response_tokens, f.samples));
            let out = generate(vec![engine.as_mut()], &self.tokenizer, &self.sandbox, &requests, &rollout, Some(&on))?;
            bar.finish_and_clear();
            let before = pool.len();
            let solved: Vec<bool> = out.episodes.chunks(f.samples).map(|c| c.iter().all(|e| e.reward == Some(1.0))).collect();
            let kept: Vec<usize> = pool.iter().zip(&solved).filter(|(_, s)| !**s).map(|(&i, _)| i).collect();
            println!("stage {}: removed {} of {} problems the policy solves {}/{} times", self.state.stage + 1, before - kept.len(), before, f.samples, f.samples);
            if !kept.is_empty() {
                pool = kept;
            }
        }
        self.state.pool = pool;
        Ok(())
    }

    fn rollout_config(&self, stage: &config::StageConfig, samples: usize, seed: u64) -> RolloutConfig {
        RolloutConfig {
            chat: self.config.chat.clone(),
            sampling: SamplingConfig { temperature: self.config.rl.temperature, top_p: self.config.rl.top_p, top_k: 0 },
            samples,
            max_response_tokens: stage.max_response_tokens,
            max_turns: stage.max_turns,
            seed,
            dispatch: self.config.rl.dispatch,
            ..RolloutConfig::default()
        }
    }

    fn selection(&self) -> Selection {
        match self.config.algo {
            Algo::Grpo => Selection::Grpo,
            Algo::GrpoRoc => Selection::GrpoRoc {
                keep: self.config.rl.group_size,
                min_per_class: 2,
                positives: match self.config.rl.positives {
                    Positives::Sample => PositiveSelection::default(),
                    Positives::TopK => PositiveSelection::TopK,
                },
                negatives: NegativeSelection::Uniform,
            },
        }
    }

    fn rl_step(&mut self, stage: &config::StageConfig) -> anyhow::Result<report::StepMetrics> {
        let t0 = Instant::now();
        let rl = self.config.rl.clone();
        let pool = &self.state.pool;
        let first = self.state.stage_step * rl.prompts_per_step;
        let tasks: Vec<Task> = (0..rl.prompts_per_step).map(|i| self.train[pool[(first + i) % pool.len()]].clone()).collect();
        let requests: Vec<_> = tasks.iter().map(Task::request).collect();
        let samples = self.config.samples_per_prompt();
        let rollout = self.rollout_config(stage, samples, mix_seed(self.config.seed, 0x7011, self.state.rl_step as u64));
        self.policy.refresh_decode_weights()?;
        let out = {
            let mut engine = policy_engine(&self.policy, kv_capacity(&self.policy, &requests, &self.tokenizer, &self.config.chat, stage.max_response_tokens, samples));
            generate(vec![engine.as_mut()], &self.tokenizer, &self.sandbox, &requests, &rollout, None)?
        };
        self.policy.end_phase();
        let gen_seconds = t0.elapsed().as_secs_f64();
        let episodes = out.episodes;
        let groups: Vec<Vec<Candidate>> = episodes
            .chunks(samples)
            .map(|g| {
                g.iter()
                    .map(|e| {
                        let u = e.tool_usage();
                        Candidate { reward: e.reward.unwrap_or(0.0), penalty: total_penalty(&u), p_err: tool_error_penalty(&u) }
                    })
                    .collect()
            })
            .collect();
        let selection = rstar2_grpo::prepare_step(&groups, &self.selection(), mix_seed(self.config.seed, 0x5e1, self.state.rl_step as u64), false);
        let kept: Vec<(&rstar2_rollout::Episode, f32)> = selection.kept.iter().map(|k| (&episodes[k.group * samples + k.index], k.advantage)).collect();
        let loss_config = LossConfig { clip_low: rl.clip_low, clip_high: rl.clip_high, ..Default::default() };
        let lr = LrSchedule::constant(rl.lr, rl.warmup_steps).at(self.state.stage_step as u64 + if self.state.stage == 0 { 0 } else { rl.warmup_steps });
        let (loss, grad_norm, loss_metrics) = if kept.is_empty() { (0.0, 0.0, Default::default()) } else { self.policy_update(&kept, &loss_config, lr)? };
        self.policy.end_phase();
        let positives: Vec<&rstar2_rollout::Episode> = episodes.iter().filter(|e| e.reward == Some(1.0)).collect();
        let kept_pos: Vec<&rstar2_rollout::Episode> = kept.iter().filter(|(e, _)| e.reward == Some(1.0)).map(|(e, _)| *e).collect();
        let m = report::StepMetrics {
            phase: "rl".into(),
            stage: self.state.stage + 1,
            stage_step: self.state.stage_step,
            rl_step: self.state.rl_step,
            reward_mean: episodes.iter().map(|e| f64::from(e.reward.unwrap_or(0.0))).sum::<f64>() / episodes.len().max(1) as f64,
            groups: selection.metrics.groups,
            kept_groups: selection.metrics.kept_groups,
            all_correct_groups: selection.metrics.all_correct_groups,
            all_wrong_groups: selection.metrics.all_wrong_groups,
            kept_rollouts: selection.metrics.kept_rollouts,
            positive_tool_error_ratio: tool_error_ratio(positives.iter().copied()),
            kept_positive_tool_error_ratio: tool_error_ratio(kept_pos.iter().copied()),
            kept_positive_p_err: selection.metrics.kept_positive_p_err,
            tool_calls_per_episode: out.metrics.calls_per_episode,
            response_length: episodes.iter().map(|e| e.loss_mask.len() as f64).sum::<f64>() / episodes.len().max(1) as f64,
            finish_reasons: out.metrics.finish_reasons.clone(),
            loss,
            grad_norm,
            lr,
            clip_frac_low: loss_metrics.clip_frac_low,
            clip_frac_high: loss_metrics.clip_frac_high,
            logprob_gap_mean: loss_metrics.logprob_gap_mean,
            logprob_gap_max: loss_metrics.logprob_gap_max,
            tokens_per_second: out.metrics.tokens_per_second,
            generation_seconds: gen_seconds,
            step_seconds: t0.elapsed().as_secs_f64(),
        };
        self.append_metrics(&serde_json::to_value(&m)?)?;
        Ok(m)
    }

    /// One policy-gradient update over the kept rollouts: micro-batches of packed sequences,
    /// each forward + backward; the loss normalization is global, as if it were one batch.
    fn policy_update(&mut self, kept: &[(&rstar2_rollout::Episode, f32)], loss_config: &LossConfig, lr: f32) -> anyhow::Result<(f64, f32, rstar2_grpo::loss::LossMetrics)> {
        let total_tokens: usize = kept.iter().map(|(e, _)| e.model_tokens()).sum::<usize>().max(1);
        let mut grads = self.policy.zero_grads();
        let (mut loss, mut metrics_acc) = (0.0f64, rstar2_grpo::loss::LossMetrics::default());
        let (mut gap_max, mut weight_sum) = (0.0f64, 0.0f64);
        let mut start = 0;
        while start < kept.len() {
            let mut end = start + 1;
            let mut tokens = kept[start].0.ids.len();
            while end < kept.len() && tokens + kept[end].0.ids.len() <= self.config.rl.micro_batch_tokens {
                tokens += kept[end].0.ids.len();
                end += 1;
            }
            let mb = &kept[start..end];
            let seqs: Vec<Vec<u32>> = mb.iter().map(|(e, _)| e.ids.clone()).collect();
            let batch = Batch::new(&seqs);
            let targets: Vec<u32> = seqs.iter().flat_map(|s| s[1..].iter().copied().chain(std::iter::once(0))).collect();
            let (acts, lp) = self.policy.forward_logprobs(&batch, &targets);
            // Response token i of a sequence is predicted at row prompt_len - 1 + i.
            let rows: Vec<std::ops::Range<usize>> = mb.iter().zip(&batch.offsets).map(|((e, _), &off)| off + e.prompt_ids.len() - 1..off + e.ids.len() - 1).collect();
            let rollouts: Vec<RolloutTokens<'_>> = mb
                .iter()
                .zip(&rows)
                .map(|((e, adv), r)| RolloutTokens { logprobs: &lp[r.clone()], old_logprobs: &lp[r.clone()], rollout_logprobs: &e.logprobs, mask: &e.loss_mask, advantage: *adv })
                .collect();
            let out = policy_loss(&rollouts, loss_config);
            let mb_tokens: usize = mb.iter().map(|(e, _)| e.model_tokens()).sum();
            let scale = match loss_config.aggregation {
                Aggregation::TokenMean => mb_tokens as f64 / total_tokens as f64,
                _ => mb.len() as f64 / kept.len() as f64,
            };
            let mut dlogprob = vec![0.0f32; batch.len()];
            for (r, g) in rows.iter().zip(&out.grads) {
                for (d, &x) in dlogprob[r.clone()].iter_mut().zip(g) {
                    *d = x * scale as f32;
                }
            }
            self.policy.backward(&acts, &dlogprob, &mut grads);
            loss += out.loss * scale;
            let w = mb_tokens as f64;
            weight_sum += w;
            metrics_acc.clip_frac_low += out.metrics.clip_frac_low * w;
            metrics_acc.clip_frac_high += out.metrics.clip_frac_high * w;
            metrics_acc.logprob_gap_mean += out.metrics.logprob_gap_mean * w;
            gap_max = gap_max.max(out.metrics.logprob_gap_max);
            start = end;
        }
        let w = weight_sum.max(1.0);
        metrics_acc.clip_frac_low /= w;
        metrics_acc.clip_frac_high /= w;
        metrics_acc.logprob_gap_mean /= w;
        metrics_acc.logprob_gap_max = gap_max;
        let norm = self.policy.clip_and_step(&mut grads, self.config.rl.max_grad_norm, lr);
        Ok((loss, norm, metrics_acc))
    }

    fn save_model(&self, dir: &Path) -> anyhow::Result<()> {
        self.policy.params().save(dir)?;
        rstar2_model::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(self.policy.config())?.as_bytes())?;
        rstar2_model::write_atomic(&dir.join("chat.json"), serde_json::to_string_pretty(&self.config.chat)?.as_bytes())?;
        std::fs::copy(&self.tokenizer_path, dir.join("tokenizer.json")).with_context(|| format!("copying {}", self.tokenizer_path.display()))?;
        Ok(())
    }

    /// Writes the checkpoint into a fresh folder, then swaps it in, so a kill at any moment
    /// leaves a complete checkpoint (the new one or the previous one).
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        let tmp = self.dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        self.save_model(&tmp)?;
        let optimizer = self.policy.optimizer().expect("a training policy has an optimizer");
        optimizer.m.save(&tmp.join("optimizer_m"))?;
        optimizer.v.save(&tmp.join("optimizer_v"))?;
        self.state.adam_step = optimizer.step;
        self.state.wall_seconds = self.wall();
        rstar2_model::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&self.state)?.as_bytes())?;
        let current = self.dir.join("checkpoint");
        let old = self.dir.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if current.exists() {
            std::fs::rename(&current, &old)?;
        }
        std::fs::rename(&tmp, &current)?;
        let _ = std::fs::remove_dir_all(&old);
        // The tokenizer is read from the checkpoint from now on.
        self.tokenizer_path = current.join("tokenizer.json");
        Ok(())
    }
}

/// Opens `auto | cpu | gpu | gpu:N` and says which backend was chosen.
pub fn open_device(spec: &str) -> anyhow::Result<Device> {
    let device = Device::open(spec)?;
    // stderr: `eval` and `generate` keep stdout for their machine-readable output.
    eprintln!("device: {}", device.describe());
    Ok(device)
}

/// Relative model paths are taken from the workspace root, so the command works from any
/// directory.
fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() { path.to_path_buf() } else { crate::test_cmd::workspace_root().join(path) }
}

fn fresh_dir(runs: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
    for i in 0.. {
        let dir = if i == 0 { runs.join(name) } else { runs.join(format!("{name}-{}", i + 1)) };
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    unreachable!()
}

/// The policy being trained: rollouts and evaluations read its f32 weights (on the CPU packed
/// for the decode kernel, packed again after optimizer steps), so they sample from exactly the
/// policy the trainer's log-probs describe.
fn training_policy(device: &Device, model: Model, optimizer: AdamW) -> anyhow::Result<Policy> {
    let mut policy = Policy::new(device, model, Some(optimizer));
    policy.set_decode_weights(DecodeWeights::F32)?;
    Ok(policy)
}
