//! The trainer: non-reasoning tool-format SFT, then multi-stage GRPO-RoC, with evaluation
//! before SFT, after SFT and after each RL stage; checkpoints, resume, metrics, plots and a
//! report in `runs/<name>/`.
//!
//! In a job of several ranks (MPI), rank 0 reads every file (config, model, data, checkpoint)
//! and sends the others what they need, and only rank 0 writes: the other ranks need nothing
//! on disk but the program.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rstar2_backend::{Device, Policy};
use rstar2_grpo::loss::{Aggregation, LossConfig, RolloutTokens, policy_loss};
use rstar2_grpo::penalty::{tool_error_penalty, total_penalty};
use rstar2_grpo::select::{Candidate, NegativeSelection, PositiveSelection, Selection};
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, DecodeWeights, LrSchedule, Model, Params, Tokenizer};
use rstar2_rollout::{RolloutConfig, SamplingConfig};
use rstar2_sandbox::queue::{QueueClient, QueueConfig};
use rstar2_sandbox::remote::HttpClient;
use rstar2_sandbox::{IsolationKind, Sandbox, SandboxConfig};
use rstar2_tasks::Task;
use rstar2_tasks::synth::{Split, SynthConfig};
use serde::{Deserialize, Serialize};

use crate::collective::{self, Collective};
use crate::config::{self, Algo, Init, Positives, TrainConfig};
use crate::eval::{EvalResult, evaluate, tool_error_ratio};
use crate::replicas::{Replicas, Totals, broadcast_params};
use crate::{progress, report};

/// What a new run is made of; every field left `None` comes from the config (the embedded
/// default, configs/tiny.toml, under the file given).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Training config (TOML) laid over the embedded default.
    pub config: Option<PathBuf>,
    /// A config shipped in configs/ by name (smollm2-135m).
    pub preset: Option<String>,
    /// An HF model folder to start from instead of the config's model.
    pub model: Option<PathBuf>,
    /// A JSONL data set (train and test split by a hash of the question).
    pub data: Option<PathBuf>,
    /// `auto | cpu | gpu | gpu:N`, or a comma-separated list of them: one replica each.
    /// `{local_rank}` stands for the rank's index on its machine (`gpu:{local_rank}`).
    pub device: Option<String>,
    pub algo: Option<Algo>,
    /// Run name: the folder `runs/<name>`.
    pub name: Option<String>,
    pub seed: Option<u64>,
    /// Where run folders are created.
    pub runs_dir: PathBuf,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { config: None, preset: None, model: None, data: None, device: None, algo: None, name: None, seed: None, runs_dir: PathBuf::from("runs") }
    }
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

/// Everything a rank starts from, read by rank 0 and sent to the others (the tensors follow
/// separately).
#[derive(Serialize, Deserialize)]
struct Start {
    dir: PathBuf,
    config: TrainConfig,
    model_config: Config,
    tokenizer_json: String,
    state: State,
    train: Vec<Task>,
    test: Vec<Task>,
    /// Resuming: optimizer moments follow the parameters.
    moments: bool,
}

/// A training run in progress.
pub struct Trainer {
    dir: PathBuf,
    config: TrainConfig,
    tokenizer: Tokenizer,
    tokenizer_json: String,
    replicas: Replicas,
    sandbox: Sandbox,
    train: Vec<Task>,
    test: Vec<Task>,
    state: State,
    started: Instant,
    wall_before: f64,
    /// For testing: fail after this many RL steps in total (on this rank).
    fail_after: Option<usize>,
}

/// Each rank's outcome of a step that may fail on some ranks: if any failed, every rank
/// returns the lowest failing rank's message, so no rank waits forever for the others.
fn agree<T>(comm: &dyn Collective, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    if comm.size() == 1 {
        return outcome;
    }
    let mine = outcome.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
    let all = comm.all_gather_bytes(mine.as_bytes());
    match all.iter().position(|m| !m.is_empty()) {
        None => outcome,
        Some(rank) => bail!("rank {rank}: {}", String::from_utf8_lossy(&all[rank])),
    }
}

/// What rank 0 computes (reads from its disk), on every rank.
fn from_leader<T: Serialize + serde::de::DeserializeOwned>(comm: &dyn Collective, read: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if comm.size() == 1 {
        return read();
    }
    let value = agree(comm, if comm.rank() == 0 { read().map(Some) } else { Ok(None) })?;
    let mut bytes = value.as_ref().map(|v| serde_json::to_vec(v).expect("a value rank 0 read serializes")).unwrap_or_default();
    comm.broadcast_bytes(&mut bytes);
    serde_json::from_slice(&bytes).context("a value from rank 0")
}

/// Refuses to start when ranks were given different configs or models.
fn agree_on_config(comm: &dyn Collective, config: &TrainConfig) -> anyhow::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    // Devices are each rank's own.
    let shared = TrainConfig { device: String::new(), ..config.clone() };
    let model = Config::from_file(&crate::paths::resolve(&config.model).join("config.json")).ok().map(|c| serde_json::to_string(&c).expect("a model config serializes"));
    let mine = serde_json::to_vec(&(toml::to_string(&shared)?, model)).expect("a pair of strings serializes");
    let all = comm.all_gather_bytes(&mine);
    let (first_config, first_model): (String, Option<String>) = serde_json::from_slice(&all[0]).expect("rank 0's config");
    for (rank, bytes) in all.iter().enumerate().skip(1) {
        let (c, m): (String, Option<String>) = serde_json::from_slice(bytes).expect("a rank's config");
        if c != first_config {
            let diff = first_config.lines().zip(c.lines()).find(|(a, b)| a != b).map_or(String::new(), |(a, b)| format!(": rank 0 has `{a}`, rank {rank} `{b}`"));
            bail!("rank {rank} was given another training config than rank 0{diff} (every rank must run the same command)");
        }
        if let (Some(a), Some(b)) = (&first_model, &m)
            && a != b
        {
            bail!("rank {rank}'s model {} has another shape than rank 0's (config.json differs)", config.model.display());
        }
    }
    Ok(())
}

/// The devices of a spec list, `{local_rank}` replaced.
pub fn open_devices(spec: &str) -> anyhow::Result<Vec<Device>> {
    let spec = spec.replace("{local_rank}", &collective::local_rank().to_string());
    spec.split(',').map(|s| open_device(s.trim()).with_context(|| format!("opening device {:?}", s.trim()))).collect()
}

impl Trainer {
    /// A new run as `options` describe it (a fresh folder under `options.runs_dir`).
    pub fn start(options: &TrainOptions) -> anyhow::Result<Trainer> {
        let comm = collective::from_environment();
        let config = agree(&*comm, build_config(options))?;
        agree_on_config(&*comm, &config)?;
        let devices = agree(&*comm, open_devices(&config.device))?;
        let loaded = if comm.rank() == 0 { Some(read_start(options, config)) } else { None };
        let (start, params) = agree(&*comm, loaded.transpose())?.unzip();
        Trainer::assemble(comm, devices, start, params.map(|p| (p, None)))
    }

    /// Continues a killed run from its last checkpoint (the whole job: every rank resumes).
    pub fn resume(dir: &Path) -> anyhow::Result<Trainer> {
        let comm = collective::from_environment();
        let loaded = if comm.rank() == 0 { Some(read_checkpoint(dir)) } else { None };
        let loaded = agree(&*comm, loaded.transpose())?;
        // Each rank opens its devices from the saved spec (rank 0's, as a template).
        let mut spec = loaded.as_ref().map(|(s, _)| s.config.device.clone().into_bytes()).unwrap_or_default();
        comm.broadcast_bytes(&mut spec);
        let devices = agree(&*comm, open_devices(&String::from_utf8_lossy(&spec)))?;
        let (start, tensors) = loaded.unzip();
        Trainer::assemble(comm, devices, start, tensors.map(|(p, m)| (p, Some(m))))
    }

    /// Every rank's trainer from rank 0's `start` and tensors (`None` elsewhere).
    fn assemble(comm: Box<dyn Collective>, devices: Vec<Device>, start: Option<Start>, tensors: Option<(Params, Option<Moments>)>) -> anyhow::Result<Trainer> {
        let mut bytes = start.as_ref().map(|s| serde_json::to_vec(s).expect("the start serializes")).unwrap_or_default();
        comm.broadcast_bytes(&mut bytes);
        let start: Start = serde_json::from_slice(&bytes).context("the run's start from rank 0")?;
        let (mut params, moments) = match tensors {
            Some(t) => t,
            None => (Params::zeros(&start.model_config), start.moments.then(|| (Params::zeros(&start.model_config), Params::zeros(&start.model_config)))),
        };
        broadcast_params(&*comm, &mut params);
        let mut optimizer = AdamW::new(AdamWConfig::default(), &params);
        if let Some((mut m, mut v)) = moments {
            broadcast_params(&*comm, &mut m);
            broadcast_params(&*comm, &mut v);
            optimizer.m = m;
            optimizer.v = v;
            optimizer.step = start.state.adam_step;
        }
        if comm.rank() != 0 {
            progress::hide_all();
        }
        let tokenizer = Tokenizer::from_json(&start.tokenizer_json, "rank 0's tokenizer.json")?;
        let mut policies = Vec::with_capacity(devices.len());
        for device in &devices {
            policies.push(training_policy(device, Model::new(start.model_config.clone(), params.clone()), optimizer.clone())?);
        }
        let sandbox = agree(&*comm, run_tools(&start.config))?;
        let replicas = Replicas::new(policies, comm);
        let total = replicas.total();
        if replicas.is_leader() && total > 1 {
            println!("data parallel: {total} replicas ({}; rank 0: {})", replicas.comm().describe(), start.config.device);
        }
        let wall_before = start.state.wall_seconds;
        Ok(Trainer {
            dir: start.dir,
            config: start.config,
            tokenizer,
            tokenizer_json: start.tokenizer_json,
            replicas,
            sandbox,
            train: start.train,
            test: start.test,
            state: start.state,
            started: Instant::now(),
            wall_before,
            fail_after: None,
        })
    }

    /// For testing fault handling: this rank fails with an error once `rl_steps` RL steps are
    /// done, as a dying device or a full disk would.
    pub fn fail_after_rl_steps(&mut self, rl_steps: Option<usize>) {
        self.fail_after = rl_steps;
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policy's replicas in this process.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// Runs the recipe from where the run stands to its end (or, with `stop_after_rl_steps`,
    /// stops as if killed after that many RL steps in total: for testing resume). In a job of
    /// several ranks an error on this rank ends the whole job (MPI_Abort) after printing it:
    /// the other ranks would otherwise wait for this one forever.
    pub fn run(&mut self, stop_after: Option<usize>) -> anyhow::Result<()> {
        let result = self.run_to_end(stop_after);
        if let Err(e) = &result
            && self.replicas.comm().size() > 1
        {
            eprintln!("rank {}: error: {e:#}\nending the whole job (MPI_Abort); `--resume` continues it from its last checkpoint", self.replicas.comm().rank());
            self.replicas.comm().abort(1);
        }
        result
    }

    fn run_to_end(&mut self, stop_after: Option<usize>) -> anyhow::Result<()> {
        if self.state.phase == Phase::Sft {
            if !self.state.evals.contains_key("before_sft") {
                self.eval_into("before_sft")?;
            }
            self.sft()?;
            self.eval_into("after_sft")?;
            self.state.phase = Phase::Rl;
            self.replicas.reset_optimizer();
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
                if let Some(n) = self.fail_after.filter(|&n| self.state.rl_step >= n) {
                    bar.abandon();
                    bail!("injected fault after {n} RL steps (--fail-after-rl-steps)");
                }
                if stop_after.is_some_and(|n| self.state.rl_step >= n) {
                    bar.abandon();
                    self.say(&format!("stopped after {} RL steps (--stop-after-rl-steps)", self.state.rl_step));
                    return Ok(());
                }
                let m = self.rl_step(&stage)?;
                bar.inc(1);
                bar.set_message(format!("reward {:.2} kept {} err+ {:.2} {:.0} tok/s", m.reward_mean, m.kept_rollouts, m.positive_tool_error_ratio, m.tokens_per_second));
                self.state.stage_step += 1;
                self.state.rl_step += 1;
                if self.state.stage_step.is_multiple_of(self.config.rl.checkpoint_every) && self.state.stage_step < stage.steps {
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
                let count = self.config.data.test_problems;
                let tasks = from_leader(self.replicas.comm(), || load_named(&data, count))?;
                self.eval_on(&label, &tasks)?;
            }
        }
        if self.replicas.is_leader() {
            self.save_model(&self.dir.join("model"))?;
            let summary = report::write(&self.dir, &self.config, &self.state.evals, &self.state.stages, self.wall())?;
            println!("{summary}");
        }
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
        let r = evaluate(&mut self.replicas, &self.tokenizer, &self.sandbox, &self.config.chat, tasks, &self.config.eval, seed, label)?;
        self.say(&format!(
            "eval {label:<18} pass@1 {:.3} ± {:.3} (n={}, {} problems)  pass@{} {:.3}  tool calls/ep {:.2}  tool errors {:.2} (in correct: {:.2})  length {:.0}",
            r.pass_at_1,
            r.stderr,
            r.k,
            r.problems,
            r.pass_at_k.keys().last().copied().unwrap_or(1),
            r.pass_at_k.values().last().map_or(r.pass_at_1, |v| v.0),
            r.tool_calls_per_episode,
            r.tool_error_ratio,
            r.positive_tool_error_ratio,
            r.response_tokens
        ));
        self.append_metrics(&serde_json::json!({"phase": "eval", "label": label, "rl_step": self.state.rl_step, "eval": r}))?;
        self.state.evals.insert(label.to_string(), r);
        Ok(())
    }

    /// One line of metrics.jsonl (written by rank 0; every rank counts it).
    fn append_metrics(&mut self, line: &serde_json::Value) -> anyhow::Result<()> {
        if self.replicas.is_leader() {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("metrics.jsonl"))?;
            writeln!(f, "{line}")?;
        }
        self.state.metric_lines += 1;
        Ok(())
    }

    /// A line of the log, printed by rank 0.
    fn say(&self, line: &str) {
        if self.replicas.is_leader() {
            println!("{line}");
        }
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
            self.say(&format!("SFT on {} synthetic problems' tool-format traces (the RL data has no code solutions)", tasks.len()));
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
                let part: Vec<&rstar2_tasks::sft::SftExample> = chunk.iter().map(|&i| &examples[i]).collect();
                // Mean cross-entropy over the batch's trained tokens: each replica's share
                // divides by the whole batch's count.
                let count: f64 = part.iter().map(|e| e.mask[1..].iter().map(|&m| f64::from(m)).sum::<f64>()).sum();
                let lr = schedule.at(step);
                let (totals, norm) = self.replicas.step(&part, |e| e.tokens.len(), |policy, share, grads| sft_share(policy, share, count, grads), 1.0, lr);
                let loss = if count > 0.0 { totals.sums[0] / count } else { 0.0 };
                let tokens: usize = part.iter().map(|e| e.tokens.len()).sum();
                let secs = t0.elapsed().as_secs_f64();
                bar.inc(1);
                bar.set_message(format!("epoch {} loss {loss:.3} {:.0} tok/s", epoch + 1, tokens as f64 / secs));
                self.append_metrics(&serde_json::json!({"phase": "sft", "step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens, "tokens_per_second": tokens as f64 / secs, "step_seconds": secs}))?;
                step += 1;
            }
        }
        bar.finish_and_clear();
        self.say(&format!("SFT: {} traces x {} epochs, {} steps in {:.0}s", examples.len(), c.epochs, step, bar.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Chooses the stage's problems (stage-3 filtering when configured) and resets the optimizer.
    fn begin_stage(&mut self) -> anyhow::Result<()> {
        let stage = self.config.rl.stages[self.state.stage].clone();
        let mut pool: Vec<usize> = (0..self.train.len()).collect();
        pool.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(self.config.seed, 0x9001, self.state.stage as u64)));
        if self.state.stage > 0 {
            self.replicas.reset_optimizer();
        }
        if let Some(f) = stage.filter_solved {
            pool.truncate(f.problems.max(1));
            let tasks: Vec<Task> = pool.iter().map(|&i| self.train[i].clone()).collect();
            let seed = mix_seed(self.config.seed, 0xf117, self.state.stage as u64);
            let rollout = self.rollout_config(&stage, f.samples, seed);
            let requests: Vec<_> = tasks.iter().map(Task::request).collect();
            let bar = progress::bar((requests.len() * f.samples) as u64, "filter solved");
            let on = |_: &rstar2_rollout::Episode, _: usize| bar.inc(1);
            let out = self.replicas.rollout(&self.tokenizer, &self.sandbox, &self.config.chat, &requests, &rollout, Some(&on))?;
            bar.finish_and_clear();
            let before = pool.len();
            let solved: Vec<bool> = out.episodes.chunks(f.samples).map(|c| c.iter().all(|e| e.reward == Some(1.0))).collect();
            let kept: Vec<usize> = pool.iter().zip(&solved).filter(|(_, s)| !**s).map(|(&i, _)| i).collect();
            self.say(&format!("stage {}: removed {} of {} problems the policy solves {}/{} times", self.state.stage + 1, before - kept.len(), before, f.samples, f.samples));
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
        let out = self.replicas.rollout(&self.tokenizer, &self.sandbox, &self.config.chat, &requests, &rollout, None)?;
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
        self.replicas.end_phase();
        let positives: Vec<&rstar2_rollout::Episode> = episodes.iter().filter(|e| e.reward == Some(1.0)).collect();
        let kept_pos: Vec<&rstar2_rollout::Episode> = kept.iter().filter(|(e, _)| e.reward == Some(1.0)).map(|(e, _)| *e).collect();
        let (abandoned, held_back) = self.sandbox.abandoned_threads();
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
            tool_threads_abandoned: abandoned,
            tool_threads_held_back: held_back,
            tool_interpreters_lost: self.sandbox.lost_interpreters(),
        };
        self.append_metrics(&serde_json::to_value(&m)?)?;
        Ok(m)
    }

    /// One policy-gradient update over the kept rollouts, shared over the replicas; the loss
    /// normalization is global, as if it were one batch.
    fn policy_update(&mut self, kept: &[(&rstar2_rollout::Episode, f32)], loss_config: &LossConfig, lr: f32) -> anyhow::Result<(f64, f32, rstar2_grpo::loss::LossMetrics)> {
        let norms = Normalization { tokens: kept.iter().map(|(e, _)| e.model_tokens()).sum::<usize>().max(1), rollouts: kept.len() };
        let micro_batch_tokens = self.config.rl.micro_batch_tokens;
        let (totals, norm) =
            self.replicas.step(kept, |(e, _)| e.ids.len(), |policy, share, grads| rl_share(policy, share, loss_config, norms, micro_batch_tokens, grads), self.config.rl.max_grad_norm, lr);
        let [loss, low, high, gap, weight] = totals.sums[..] else { unreachable!("rl_share reports five sums") };
        let w = weight.max(1.0);
        let metrics = rstar2_grpo::loss::LossMetrics { clip_frac_low: low / w, clip_frac_high: high / w, logprob_gap_mean: gap / w, logprob_gap_max: totals.maxima[0].max(0.0), ..Default::default() };
        Ok((loss, norm, metrics))
    }

    fn save_model(&self, dir: &Path) -> anyhow::Result<()> {
        let policy = self.replicas.first();
        policy.params().save(dir)?;
        rstar2_model::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(policy.config())?.as_bytes())?;
        rstar2_model::write_atomic(&dir.join("chat.json"), serde_json::to_string_pretty(&self.config.chat)?.as_bytes())?;
        rstar2_model::write_atomic(&dir.join("tokenizer.json"), self.tokenizer_json.as_bytes())?;
        Ok(())
    }

    /// Writes the checkpoint into a fresh folder, then swaps it in, so a kill at any moment
    /// leaves a complete checkpoint (the new one or the previous one).
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        if !self.replicas.is_leader() {
            return Ok(());
        }
        let tmp = self.dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        self.save_model(&tmp)?;
        let optimizer = self.replicas.first().optimizer().expect("a training policy has an optimizer");
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
        Ok(())
    }
}

/// The config of a new run: the file or preset over the default, then the options.
fn build_config(options: &TrainOptions) -> anyhow::Result<TrainConfig> {
    let preset = match &options.preset {
        Some(name) => {
            let path = crate::paths::workspace_root().join("configs").join(format!("{name}.toml"));
            if !path.exists() {
                bail!("no preset {name:?}: {} does not exist", path.display());
            }
            Some(path)
        }
        None => None,
    };
    let config_file = preset.as_deref().or(options.config.as_deref());
    let mut config = TrainConfig::load(config_file)?;
    if let Some(m) = &options.model {
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
        if options.name.is_none() {
            config.name = m.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
        }
    }
    if let Some(d) = &options.data {
        config.data.train = d.display().to_string();
        config.data.test = d.display().to_string();
    }
    if let Some(d) = &options.device {
        config.device = d.clone();
    }
    if let Some(a) = options.algo {
        config.algo = a;
    }
    if let Some(n) = &options.name {
        config.name = n.clone();
    }
    if let Some(s) = options.seed {
        config.seed = s;
    }
    config.validate()?;
    Ok(config)
}

/// Rank 0: the model, tokenizer and data of a new run, and its fresh folder.
fn read_start(options: &TrainOptions, config: TrainConfig) -> anyhow::Result<(Start, Params)> {
    let model_dir = crate::paths::resolve(&config.model);
    let model_config = Config::from_file(&model_dir.join("config.json")).with_context(|| format!("model folder {}", model_dir.display()))?;
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(&tokenizer_path).with_context(|| format!("reading {}", tokenizer_path.display()))?;
    Tokenizer::from_json(&tokenizer_json, &tokenizer_path.display().to_string())?;
    let params = match config.init {
        Init::Random => Params::random(&model_config, config.seed),
        Init::Pretrained => Params::load(&model_dir, &model_config).with_context(|| {
            let name = model_dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
            format!("loading the weights of {} (for a known model: cargo xtask fetch-model {name})", model_dir.display())
        })?,
    };
    let (train, test) = load_tasks(&config)?;
    let dir = fresh_dir(&options.runs_dir, &config.name)?;
    std::fs::write(dir.join("config.toml"), toml::to_string(&config)?)?;
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
    let state = State { phase: Phase::Sft, stage: 0, stage_step: 0, rl_step: 0, adam_step: 0, pool: Vec::new(), evals: BTreeMap::new(), stages: Vec::new(), metric_lines: 0, wall_seconds: 0.0 };
    Ok((Start { dir, config, model_config, tokenizer_json, state, train, test, moments: false }, params))
}

/// AdamW's first and second moments.
type Moments = (Params, Params);

/// Rank 0: a run folder's last checkpoint (metrics written after it are dropped: they are
/// produced again).
fn read_checkpoint(dir: &Path) -> anyhow::Result<(Start, (Params, Moments))> {
    let text = std::fs::read_to_string(dir.join("config.toml")).with_context(|| format!("{} is not a run folder (no config.toml)", dir.display()))?;
    let config: TrainConfig = toml::from_str(&text).with_context(|| format!("{}/config.toml", dir.display()))?;
    let ckpt =
        [dir.join("checkpoint"), dir.join("checkpoint.old")].into_iter().find(|p| p.join("state.json").exists()).with_context(|| format!("{} has no checkpoint to resume from", dir.display()))?;
    let state: State = serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json"))?).with_context(|| format!("{}/state.json", ckpt.display()))?;
    let model_config = Config::from_file(&ckpt.join("config.json"))?;
    let params = Params::load(&ckpt, &model_config)?;
    let m = Params::load(&ckpt.join("optimizer_m"), &model_config)?;
    let v = Params::load(&ckpt.join("optimizer_v"), &model_config)?;
    let tokenizer_path = ckpt.join("tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(&tokenizer_path).with_context(|| format!("reading {}", tokenizer_path.display()))?;
    Tokenizer::from_json(&tokenizer_json, &tokenizer_path.display().to_string())?;
    let metrics = dir.join("metrics.jsonl");
    let kept: Vec<String> = std::fs::read_to_string(&metrics).unwrap_or_default().lines().take(state.metric_lines).map(str::to_string).collect();
    rstar2_model::write_atomic(&metrics, kept.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes())?;
    let (train, test) = load_tasks(&config)?;
    println!("rstar2 train: resuming {} at {:?} stage {} step {}", dir.display(), state.phase, state.stage + 1, state.stage_step);
    Ok((Start { dir: dir.to_path_buf(), config, model_config, tokenizer_json, state, train, test, moments: true }, (params, (m, v))))
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
    let test = from(&d.test, Split::Test, d.test_problems, rstar2_tasks::synth::HELD_OUT_SEED)?;
    Ok((from(&d.train, Split::Train, d.train_problems, config.seed)?, test))
}

/// The problems of a data set given by name (gsm8k, ...) or path, the rows it skipped reported.
fn load_file(source: &str) -> anyhow::Result<(PathBuf, Vec<Task>)> {
    let path = rstar2_tasks::real::resolve(source, &crate::paths::workspace_root())?;
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

/// The tool environment, its interpreters where `isolation` says. With `real_math` (runs on a
/// real data set) sympy and mpmath are importable, from target/pylib where `fetch-data` (or the
/// tests) put them, and imported when each interpreter starts so no call pays the import;
/// without them (nothing is downloaded at run time) it says so and runs without.
pub fn sandbox(real_math: bool, isolation: IsolationKind) -> anyhow::Result<Sandbox> {
    let mut c = SandboxConfig::of_kind(isolation)?;
    c.workers = c.workers.max(2);
    if real_math {
        let pylib = crate::paths::pylib_dir();
        if crate::paths::has_pylib(&pylib) {
            c.interpreter.pylib = Some(pylib);
            c.interpreter.preload = vec!["sympy".into(), "mpmath".into()];
        } else {
            eprintln!("note: the tool environment has no sympy/mpmath ({} is empty; `cargo xtask fetch-data math` puts them there)", pylib.display());
        }
    }
    Ok(Sandbox::new(c)?)
}

/// The tool environment of a training run: [`sandbox`], the HTTP server `[sandbox] url` or the
/// Redis queue `[sandbox] redis` names (checked to answer now).
pub fn run_tools(config: &TrainConfig) -> anyhow::Result<Sandbox> {
    if let Some(url) = &config.sandbox.url {
        let client = HttpClient::connect(url).context("[sandbox] url")?;
        let (queued, workers) = client.status().context("[sandbox] url")?;
        println!("tools: code-judge HTTP server {} ({workers} workers, {queued} calls waiting)", client.url());
        return Ok(Sandbox::http(client));
    }
    let Some(uri) = &config.sandbox.redis else {
        let local = sandbox(config.data.uses_real_data(), config.sandbox.isolation)?;
        println!("tools: {} {} interpreters on this machine", local.workers(), config.sandbox.isolation);
        return Ok(local);
    };
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

/// Opens `auto | cpu | gpu | gpu:N` and says which backend was chosen.
pub fn open_device(spec: &str) -> anyhow::Result<Device> {
    let device = Device::open(spec)?;
    // stderr: `eval` and `generate` keep stdout for their machine-readable output.
    eprintln!("device: {}", device.describe());
    Ok(device)
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
pub fn training_policy(device: &Device, model: Model, optimizer: AdamW) -> anyhow::Result<Policy> {
    let mut policy = Policy::new(device, model, Some(optimizer));
    policy.set_decode_weights(DecodeWeights::F32)?;
    Ok(policy)
}

/// What the loss of a step divides by: all kept rollouts' model tokens (token-mean) or their
/// count (sequence-mean), over the whole step.
#[derive(Clone, Copy)]
struct Normalization {
    tokens: usize,
    rollouts: usize,
}

/// One replica's share of an SFT batch: sums of -logprob over trained tokens, gradients of the
/// batch mean (`count` trained tokens in the whole batch). Sums: [loss * count].
pub fn sft_share(policy: &Policy, share: &[&rstar2_tasks::sft::SftExample], count: f64, grads: &mut rstar2_backend::Grads) -> Totals {
    if share.is_empty() || count == 0.0 {
        return Totals { sums: vec![0.0], maxima: Vec::new() };
    }
    let seqs: Vec<Vec<u32>> = share.iter().map(|e| e.tokens.clone()).collect();
    let batch = Batch::new(&seqs);
    let mut targets = Vec::with_capacity(batch.len());
    let mut mask = Vec::with_capacity(batch.len());
    for e in share {
        for t in 0..e.tokens.len() {
            let next = t + 1 < e.tokens.len();
            targets.push(if next { e.tokens[t + 1] } else { 0 });
            mask.push(if next { f32::from(e.mask[t + 1]) } else { 0.0 });
        }
    }
    let (acts, lp) = policy.forward_logprobs(&batch, &targets);
    let loss_sum: f64 = -lp.iter().zip(&mask).map(|(&l, &m)| f64::from(l * m)).sum::<f64>();
    let dlogprob: Vec<f32> = mask.iter().map(|&m| -m / count as f32).collect();
    policy.backward(&acts, &dlogprob, grads);
    Totals { sums: vec![loss_sum], maxima: Vec::new() }
}

/// One replica's share of a policy-gradient update: micro-batches of packed sequences, each
/// forward + backward, scaled by the step's global normalization. Sums: [loss, clip_frac_low,
/// clip_frac_high and logprob_gap_mean each times the micro-batch's tokens, those tokens];
/// maxima: [logprob_gap_max].
fn rl_share(policy: &Policy, kept: &[(&rstar2_rollout::Episode, f32)], loss_config: &LossConfig, norms: Normalization, micro_batch_tokens: usize, grads: &mut rstar2_backend::Grads) -> Totals {
    let mut sums = [0.0f64; 5];
    let mut gap_max = f64::NEG_INFINITY;
    let mut start = 0;
    while start < kept.len() {
        let mut end = start + 1;
        let mut tokens = kept[start].0.ids.len();
        while end < kept.len() && tokens + kept[end].0.ids.len() <= micro_batch_tokens {
            tokens += kept[end].0.ids.len();
            end += 1;
        }
        let mb = &kept[start..end];
        let seqs: Vec<Vec<u32>> = mb.iter().map(|(e, _)| e.ids.clone()).collect();
        let batch = Batch::new(&seqs);
        let targets: Vec<u32> = seqs.iter().flat_map(|s| s[1..].iter().copied().chain(std::iter::once(0))).collect();
        let (acts, lp) = policy.forward_logprobs(&batch, &targets);
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
            Aggregation::TokenMean => mb_tokens as f64 / norms.tokens as f64,
            _ => mb.len() as f64 / norms.rollouts as f64,
        };
        let mut dlogprob = vec![0.0f32; batch.len()];
        for (r, g) in rows.iter().zip(&out.grads) {
            for (d, &x) in dlogprob[r.clone()].iter_mut().zip(g) {
                *d = x * scale as f32;
            }
        }
        policy.backward(&acts, &dlogprob, grads);
        let w = mb_tokens as f64;
        sums[0] += out.loss * scale;
        sums[1] += out.metrics.clip_frac_low * w;
        sums[2] += out.metrics.clip_frac_high * w;
        sums[3] += out.metrics.logprob_gap_mean * w;
        sums[4] += w;
        gap_max = gap_max.max(out.metrics.logprob_gap_max);
        start = end;
    }
    Totals { sums: sums.to_vec(), maxima: vec![gap_max] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rstar2_rollout::{Episode, FinishReason};

    /// Random episodes for the tiny model: prompt, response (some tokens the tool's), sampler
    /// log-probs near the policy's, advantages of both signs.
    fn episodes(vocab: usize, n: usize) -> Vec<(Episode, f32)> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..n)
            .map(|i| {
                let (prompt, response) = (rng.random_range(3..9), rng.random_range(4..20));
                let ids: Vec<u32> = (0..prompt + response).map(|_| rng.random_range(0..vocab as u32)).collect();
                let loss_mask: Vec<u8> = (0..response).map(|t| u8::from(t % 5 != 3)).collect();
                let logprobs = loss_mask.iter().map(|&m| if m == 1 { -rng.random_range(4.0..8.0f32) } else { 0.0 }).collect();
                let episode = Episode {
                    id: format!("p{i}"),
                    sample: 0,
                    engine: 0,
                    prompt_ids: ids[..prompt].to_vec(),
                    ids,
                    loss_mask,
                    logprobs,
                    turns: 1,
                    tool_calls: Vec::new(),
                    finish_reason: FinishReason::ALL[0],
                    text: String::new(),
                    reward: None,
                    extracted: None,
                };
                (episode, if i % 2 == 0 { 1.0 } else { -0.5 - i as f32 / 10.0 })
            })
            .collect()
    }

    /// Two CPU replicas take the same policy-gradient step as one: the same loss and gradient
    /// norm, and parameters equal up to the order of the float sums.
    #[test]
    fn rl_update_over_two_replicas_equals_one() {
        let config = Config::from_file(&crate::paths::workspace_root().join("models/tiny/config.json")).unwrap();
        let params = Params::random(&config, 3);
        let data = episodes(config.vocab_size, 7);
        let kept: Vec<(&Episode, f32)> = data.iter().map(|(e, a)| (e, *a)).collect();
        let norms = Normalization { tokens: kept.iter().map(|(e, _)| e.model_tokens()).sum(), rollouts: kept.len() };
        let loss_config = LossConfig::default();
        // AdamW's first step is lr * g / (|g| + eps): with the default eps (1e-8) a gradient
        // element near eps turns the summation-order noise of two replicas (1e-9) into a few
        // percent of lr (seen once in CI: 6.8%). A larger eps keeps the step a real AdamW step
        // and the comparison about the replicas.
        let adamw = AdamWConfig { eps: 1e-4, ..AdamWConfig::default() };
        let mut results = Vec::new();
        for replicas in [1, 2] {
            let policies = (0..replicas).map(|_| training_policy(&Device::Cpu, Model::new(config.clone(), params.clone()), AdamW::new(adamw, &params)).unwrap()).collect();
            let mut r = Replicas::new(policies, Box::new(collective::Alone));
            // Micro-batches of about two sequences, so shares hold several.
            let (totals, norm) = r.step(&kept, |(e, _)| e.ids.len(), |p, share, g| rl_share(p, share, &loss_config, norms, 40, g), 1.0, 1e-3);
            let after: Vec<Params> = r.policies().iter().map(|p| p.params().into_owned()).collect();
            results.push((totals, norm, after));
        }
        let (one, two) = (&results[0], &results[1]);
        assert!(one.1 > 0.0);
        assert!((one.1 - two.1).abs() <= 1e-5 * one.1, "gradient norms {} vs {}", one.1, two.1);
        let (l1, l2) = (one.0.sums[0], two.0.sums[0]);
        assert!(l1 != 0.0 && (l1 - l2).abs() <= 1e-6 * l1.abs(), "losses {l1} vs {l2}");
        assert_eq!(one.0.sums[4], two.0.sums[4], "trained tokens");
        // Both replicas took the same step, and it is the single replica's.
        assert_eq!(two.2[0].data, two.2[1].data);
        let moved = one.2[0].data.iter().flatten().zip(params.data.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let diff = one.2[0].data.iter().flatten().zip(two.2[0].data.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 1e-4, "the step moved the parameters by {moved}");
        assert!(diff <= 0.02 * moved, "one replica vs two differ by {diff}; the step moved them by {moved}");
    }
}
