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
use rstar2_backend::Device;
use rstar2_model::{AdamW, AdamWConfig, Config, Model, Params, Tokenizer};
use rstar2_sandbox::Sandbox;
use rstar2_tasks::Task;
use serde::{Deserialize, Serialize};

use crate::collective::{self, Collective};
use crate::config::{Algo, TrainConfig};
use crate::eval::{EvalResult, evaluate};
use crate::replicas::{Replicas, broadcast_params};
use crate::{progress, report};

mod rl;
mod setup;
mod sft;

use setup::{Moments, agree, agree_on_config, build_config, from_leader, load_named, mix_seed, read_checkpoint, read_start};
pub use setup::{is_real_data, open_device, open_devices, run_tools, sandbox, training_policy};
pub use sft::sft_share;

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
            // One write: `eprintln!` writes each formatted piece on its own, and mpirun's abort
            // banner on the same stream could land between them ("rank " ... "1: error").
            let message = format!("rank {}: error: {e:#}\nending the whole job (MPI_Abort); `--resume` continues it from its last checkpoint\n", self.replicas.comm().rank());
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), message.as_bytes());
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
