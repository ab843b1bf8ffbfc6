//! The recipe in a page: tool-format SFT, then GRPO-RoC steps whose rollouts call the Python tool
//! in the page, one awaited step at a time (a page yields to its event loop between steps, and at
//! every WebGPU read-back inside one).
//!
//! It is `cargo xtask train`'s recipe with the same pieces: the synthetic problems and SFT traces
//! of `rstar2-tasks`, the chat format, trajectories and episodes of `rstar2-rollout`, the reward,
//! RoC selection, advantages and clipped loss of `rstar2-grpo`, and the chat and SFT mix of
//! `configs/tiny.toml`. What differs is the driver: generation here is lockstep over all of a
//! step's trajectories, tool calls run one by one (in the page's tool worker, see
//! [`Recipe::use_tool_function`]), and the update is one packed batch per step.

use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rstar2_grpo::loss::LossConfig;
use rstar2_grpo::select::{Candidate, NegativeSelection, PositiveSelection, Selection};
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, KvCache, Model, Params, Tokenizer};
use rstar2_rollout::episode::Episode;
use rstar2_rollout::packed::Packed;
use rstar2_rollout::sample::sample;
use rstar2_rollout::trajectory::{Trajectory, TurnEnd};
use rstar2_rollout::{ChatFormat, Request, RolloutConfig, SamplingConfig};
use rstar2_sandbox::{ToolCall, ToolResult};
use rstar2_tasks::Task;
use rstar2_tasks::sft::{SftExample, SftMix};
use rstar2_tasks::synth::{Split, SynthConfig};
use serde::{Deserialize, Serialize};

use crate::PythonTool;

/// The default run's config, whose chat format and SFT mix the page's recipe uses.
const TINY_TOML: &str = include_str!("../../../configs/tiny.toml");

/// The sizes of a page's run (the rest is the tiny preset's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Seeds problems, initial weights, sampling.
    pub seed: u64,
    /// SFT traces, and passes over them.
    pub sft_examples: usize,
    /// Passes over the SFT traces.
    pub sft_epochs: usize,
    /// Traces per SFT step.
    pub sft_batch: usize,
    /// SFT learning rate.
    pub sft_lr: f32,
    /// GRPO-RoC steps.
    pub rl_steps: usize,
    /// Problems per GRPO-RoC step.
    pub prompts_per_step: usize,
    /// Rollouts kept per problem (G).
    pub group_size: usize,
    /// Rollouts sampled per problem: G times this.
    pub oversample: usize,
    /// Response budget in tokens, tool output included.
    pub max_response_tokens: usize,
    /// Assistant turns at most.
    pub max_turns: u32,
    /// RL learning rate.
    pub rl_lr: f32,
    /// Difficulty levels of the problems.
    pub levels: Vec<u8>,
    /// A tool call's wall-clock limit.
    pub tool_timeout_ms: u32,
    /// A tool call's memory budget.
    pub tool_memory_mib: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: 1,
            sft_examples: 2000,
            sft_epochs: 2,
            sft_batch: 8,
            sft_lr: 2e-3,
            rl_steps: 50,
            prompts_per_step: 8,
            group_size: 4,
            oversample: 2,
            max_response_tokens: 256,
            max_turns: 4,
            rl_lr: 1e-4,
            levels: vec![1, 2],
            tool_timeout_ms: 4000,
            tool_memory_mib: 256,
        }
    }
}

/// What one step did, for the page's curves and its rollout view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// "sft" or "rl".
    pub phase: String,
    /// Steps taken so far, this one included.
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// SFT: mean cross-entropy of the trained tokens; RL: the clipped policy loss.
    pub loss: f64,
    /// RL: mean reward of all sampled rollouts.
    pub reward: f64,
    /// RL: share of tool calls that failed.
    pub tool_error_ratio: f64,
    /// RL: tool calls made.
    pub tool_calls: usize,
    /// Tokens the step trained on (SFT) or generated (RL).
    pub tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
    /// RL: two of the step's rollouts, as text (tool calls and outputs included).
    pub samples: Vec<String>,
}

/// The policy on one of the two backends, with its optimizer.
enum Backend {
    Cpu { model: Model, opt: AdamW },
    Gpu { model: rstar2_gpu::GpuModel, opt: rstar2_gpu::GpuAdamW },
}

/// A run of the recipe, advanced one step at a time.
pub struct Recipe {
    settings: Settings,
    config: Config,
    tokenizer: Tokenizer,
    chat: ChatFormat,
    backend: Backend,
    /// Runs the rollouts' tool calls.
    tools: Tools,
    /// Tokenized SFT traces.
    sft: Vec<SftExample>,
    /// Order of SFT traces per epoch, then RL problems.
    sft_order: Vec<usize>,
    rl_tasks: Vec<Task>,
    step: usize,
    rl: RlSettings,
}

/// What GRPO-RoC takes from the tiny preset.
struct RlSettings {
    temperature: f32,
    clip_low: f32,
    clip_high: f32,
    max_grad_norm: f32,
    warmup_steps: u64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// A model config, tokenizer or settings that do not parse.
    #[error("{0}")]
    Input(String),
    /// The tool-format traces could not be built.
    #[error("building the SFT traces: {0}")]
    Traces(#[from] rstar2_tasks::TaskError),
    /// The problem generator refused the settings.
    #[error("generating problems: {0}")]
    Problems(#[from] rstar2_tasks::synth::SynthError),
}

impl Recipe {
    /// A run from scratch: `config_json` and `tokenizer_json` are a model folder's (the tiny
    /// preset's by default), weights are drawn from `settings.seed`, and `gpu` is the WebGPU
    /// device to train on (`None`: the CPU backend). Builds the SFT traces, running their tool
    /// calls in the page's interpreter.
    pub fn new(config_json: &str, tokenizer_json: &str, settings: Settings, gpu: Option<Arc<rstar2_gpu::Gpu>>) -> Result<Recipe, RecipeError> {
        let config = Config::from_json(config_json, "config.json").map_err(|e| RecipeError::Input(e.to_string()))?;
        let tokenizer = Tokenizer::from_json(tokenizer_json, "tokenizer.json").map_err(|e| RecipeError::Input(e.to_string()))?;
        let preset: toml::Table = TINY_TOML.parse().map_err(|e| RecipeError::Input(format!("configs/tiny.toml: {e}")))?;
        let section = |name: &str| preset.get(name).cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
        let chat: ChatFormat = section("chat").try_into().map_err(|e| RecipeError::Input(format!("configs/tiny.toml [chat]: {e}")))?;
        let mix: SftMix = section("sft").get("mix").cloned().map_or(Ok(SftMix::default()), |m| m.try_into()).map_err(|e| RecipeError::Input(format!("configs/tiny.toml [sft] mix: {e}")))?;
        let rl_table = section("rl");
        let number = |key: &str, default: f64| rl_table.get(key).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64))).unwrap_or(default);
        let rl = RlSettings {
            temperature: number("temperature", 1.0) as f32,
            clip_low: number("clip_low", 0.2) as f32,
            clip_high: number("clip_high", 0.28) as f32,
            max_grad_norm: number("max_grad_norm", 1.0) as f32,
            warmup_steps: number("warmup_steps", 5.0) as u64,
        };
        let mut tool = PythonTool::new(settings.tool_timeout_ms, settings.tool_memory_mib).map_err(|e| RecipeError::Input(format!("{e:?}")))?;
        let synth = SynthConfig { levels: settings.levels.clone(), ..Default::default() };
        let sft_tasks = rstar2_tasks::synth::generate(&synth, Split::Train, settings.sft_examples, settings.seed ^ 0x5f7)?;
        let traces = rstar2_tasks::sft::build_traces_with(&sft_tasks, &chat, &mix, settings.seed, |codes| codes.iter().map(|c| tool.call(&ToolCall::new(c.as_str()))).collect())?;
        let sft: Vec<SftExample> = traces.iter().map(|t| t.tokenize(&tokenizer)).collect();
        let mut sft_order = Vec::new();
        for epoch in 0..settings.sft_epochs {
            let mut order: Vec<usize> = (0..sft.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(settings.seed ^ (epoch as u64 + 1)));
            sft_order.extend(order);
        }
        let rl_tasks = rstar2_tasks::synth::generate(&synth, Split::Train, settings.rl_steps * settings.prompts_per_step, settings.seed ^ 0x7011)?;
        let model = Model::new(config.clone(), Params::random(&config, settings.seed));
        let adamw = AdamWConfig::default();
        let backend = match gpu {
            Some(gpu) => {
                let model = rstar2_gpu::GpuModel::new(gpu, &model);
                let opt = rstar2_gpu::GpuAdamW::new(adamw, &model);
                Backend::Gpu { model, opt }
            }
            None => {
                let opt = AdamW::new(adamw, &model.params);
                Backend::Cpu { model, opt }
            }
        };
        Ok(Recipe { settings, config, tokenizer, chat, backend, tools: Tools { own: tool, page: None }, sft, sft_order, rl_tasks, step: 0, rl })
    }

    /// Sends the rollouts' tool calls to `function` from now on: a JavaScript function taking a
    /// call as JSON (`{"code", "stdin"}`) and returning a promise of the sandbox's result as JSON.
    /// The page's runs the call in a Web Worker that it ends, and replaces, when the call outlives
    /// its deadline, which stops the calls the interpreter's own checks cannot (see
    /// `rstar2_sandbox::Watchdog`). Without one the calls run in the recipe's own interpreter.
    pub fn use_tool_function(&mut self, function: js_sys::Function) {
        self.tools.page = Some(function);
    }

    /// The settings the run started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// SFT steps, then RL steps.
    pub fn total_steps(&self) -> usize {
        self.sft_steps() + self.settings.rl_steps
    }

    fn sft_steps(&self) -> usize {
        self.sft_order.len().div_ceil(self.settings.sft_batch.max(1))
    }

    /// Whether every step has been taken.
    pub fn done(&self) -> bool {
        self.step >= self.total_steps()
    }

    /// Runs the next step.
    pub async fn step(&mut self) -> StepReport {
        let start = web_time::Instant::now();
        let mut report = if self.step < self.sft_steps() { self.sft_step().await } else { self.rl_step().await };
        self.step += 1;
        report.step = self.step;
        report.total_steps = self.total_steps();
        report.seconds = start.elapsed().as_secs_f64();
        report
    }

    /// One SFT step: mean cross-entropy of the batch's model tokens, one AdamW update (cosine
    /// decay after a short warm-up, as the CLI's SFT).
    async fn sft_step(&mut self) -> StepReport {
        let b = self.settings.sft_batch.max(1);
        let part: Vec<&SftExample> = self.sft_order[self.step * b..((self.step + 1) * b).min(self.sft_order.len())].iter().map(|&i| &self.sft[i]).collect();
        let seqs: Vec<Vec<u32>> = part.iter().map(|e| e.tokens.clone()).collect();
        let (targets, mask) = rstar2_tasks::sft::next_token_targets(&part);
        let count = mask.iter().sum::<f32>().max(1.0);
        let total = self.sft_steps() as u64;
        let schedule = rstar2_model::LrSchedule { lr: self.settings.sft_lr, warmup_steps: (total / 25).max(1), cosine_total_steps: Some(total), min_ratio: 0.0 };
        let lr = schedule.at(self.step as u64);
        let lp = self.backend.update(&Batch::new(&seqs), &targets, |_| mask.iter().map(|&m| -m / count).collect(), 1.0, lr).await;
        let loss = -lp.iter().zip(&mask).map(|(&l, &m)| f64::from(l * m)).sum::<f64>() / f64::from(count);
        StepReport { phase: "sft".into(), loss, tokens: seqs.iter().map(Vec::len).sum(), ..Default::default() }
    }

    /// One GRPO-RoC step: G x oversample rollouts per problem with the tool, RoC selection of G,
    /// group advantages, the clipped policy loss over the kept rollouts' model tokens.
    async fn rl_step(&mut self) -> StepReport {
        let k = self.step - self.sft_steps();
        let p = self.settings.prompts_per_step;
        let requests: Vec<Request> = self.rl_tasks[k * p..(k + 1) * p].iter().map(Task::request).collect();
        let samples = self.settings.group_size * self.settings.oversample;
        let rollout = RolloutConfig {
            chat: self.chat.clone(),
            sampling: SamplingConfig { temperature: self.rl.temperature, top_p: 1.0, top_k: 0 },
            samples,
            max_response_tokens: self.settings.max_response_tokens,
            max_turns: self.settings.max_turns,
            seed: self.settings.seed ^ (0x7011 + k as u64),
            ..RolloutConfig::default()
        };
        let episodes = self.generate(&requests, &rollout).await;
        let groups: Vec<Vec<Candidate>> = episodes.chunks(samples).map(|g| g.iter().map(Episode::candidate).collect()).collect();
        let selection = Selection::GrpoRoc { keep: self.settings.group_size, min_per_class: 2, positives: PositiveSelection::default(), negatives: NegativeSelection::Uniform };
        let chosen = rstar2_grpo::prepare_step(&groups, &selection, self.settings.seed ^ (0x5e1 + k as u64), false);
        let kept: Vec<(&Episode, f32)> = chosen.kept.iter().map(|c| (&episodes[c.group * samples + c.index], c.advantage)).collect();
        let lr = rstar2_model::LrSchedule::constant(self.settings.rl_lr, self.rl.warmup_steps).at(k as u64);
        let loss = if kept.is_empty() { 0.0 } else { self.policy_update(&kept, lr).await };
        let calls: usize = episodes.iter().map(|e| e.tool_calls.len()).sum();
        let failed: usize = episodes.iter().map(|e| e.tool_calls.iter().filter(|c| c.failed()).count()).sum();
        StepReport {
            phase: "rl".into(),
            loss,
            reward: episodes.iter().map(|e| f64::from(e.reward.unwrap_or(0.0))).sum::<f64>() / episodes.len().max(1) as f64,
            tool_error_ratio: if calls == 0 { 0.0 } else { failed as f64 / calls as f64 },
            tool_calls: calls,
            tokens: episodes.iter().map(Episode::model_tokens).sum(),
            samples: episodes.iter().take(2).map(|e| format!("{}{}", self.tokenizer.decode(&e.prompt_ids), e.text)).collect(),
            ..Default::default()
        }
    }

    /// The clipped policy loss over the kept rollouts (token mean), one update; returns the loss.
    async fn policy_update(&mut self, kept: &[(&Episode, f32)], lr: f32) -> f64 {
        let packed = Packed::new(kept);
        let config = LossConfig { clip_low: self.rl.clip_low, clip_high: self.rl.clip_high, ..Default::default() };
        let mut loss = 0.0;
        self.backend
            .update(
                &packed.batch,
                &packed.targets,
                |lp| {
                    let (out, dlogprob) = packed.policy_loss(lp, &config, 1.0);
                    loss = out.loss;
                    dlogprob
                },
                self.rl.max_grad_norm,
                lr,
            )
            .await;
        loss
    }

    /// Every trajectory of the step, decoded in lockstep: each decoding step feeds every
    /// unfinished trajectory's pending tokens, draws one token each, and runs the calls of the
    /// turns that end.
    async fn generate(&mut self, requests: &[Request], config: &RolloutConfig) -> Vec<Episode> {
        let end_token = self.tokenizer.token_id(&config.chat.end_of_turn).expect("the tokenizer has the end-of-turn token");
        // (request, sample, the trajectory until it finishes)
        let mut trajs: Vec<(usize, usize, Option<Trajectory>)> = Vec::new();
        for (r, request) in requests.iter().enumerate() {
            let prompt = Arc::new(self.tokenizer.encode(&config.chat.prompt(&request.question)));
            for s in 0..config.samples {
                trajs.push((r, s, Some(Trajectory::new(prompt.clone(), config, (r * config.samples + s) as u64))));
            }
        }
        let capacity: usize = trajs.iter().flat_map(|(_, _, t)| t).map(|t| t.prompt.len() + config.max_response_tokens + 1).sum();
        let mut cache = self.backend.cache(capacity);
        let mut finished: Vec<Option<Episode>> = (0..trajs.len()).map(|_| None).collect();
        loop {
            let live: Vec<usize> = (0..trajs.len()).filter(|&i| trajs[i].2.is_some()).collect();
            if live.is_empty() {
                break;
            }
            let seqs: Vec<u64> = live.iter().map(|&i| i as u64).collect();
            let chunks: Vec<&[u32]> = live.iter().map(|&i| trajs[i].2.as_ref().expect("a live trajectory").feed.as_slice()).collect();
            let logits = self.backend.extend(&mut cache, &seqs, &chunks).await;
            for (&i, l) in live.iter().zip(logits) {
                let (r, s, slot) = &mut trajs[i];
                let t = slot.as_mut().expect("a live trajectory");
                let draw = sample(&l, &config.sampling, &mut t.rng);
                if !t.take_token(draw, end_token, config) {
                    continue;
                }
                let reason = match t.end_turn(&self.tokenizer, config) {
                    TurnEnd::Finished(reason) => Some(reason),
                    TurnEnd::Calls(calls) => {
                        let mut results = Vec::with_capacity(calls.len());
                        for (index, call) in calls {
                            results.push((index, self.tools.call(&call).await));
                        }
                        t.deliver(results, &self.tokenizer, config).err()
                    }
                };
                if let Some(reason) = reason {
                    cache.release(i as u64);
                    let done = slot.take().expect("a live trajectory");
                    finished[i] = Some(done.into_episode(&requests[*r], *s, 0, reason, &self.tokenizer, config));
                }
            }
        }
        finished.into_iter().map(|e| e.expect("every trajectory finished")).collect()
    }

    /// The trained model as an HF folder's files: (`model.safetensors`, `config.json`,
    /// `tokenizer.json`).
    pub async fn model_files(&self, config_json: &str, tokenizer_json: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let params = match &self.backend {
            Backend::Cpu { model, .. } => model.params.clone(),
            Backend::Gpu { model, .. } => model.download_params_async().await,
        };
        Ok(vec![("model.safetensors".into(), params.to_safetensors()?), ("config.json".into(), config_json.as_bytes().to_vec()), ("tokenizer.json".into(), tokenizer_json.as_bytes().to_vec())])
    }

    /// The model's config.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Where tool calls run: the SFT traces' (the tasks' own solution code) always in the recipe's
/// interpreter, the model's in the page's tool function where it gave one.
struct Tools {
    own: PythonTool,
    page: Option<js_sys::Function>,
}

impl Tools {
    async fn call(&mut self, call: &ToolCall) -> ToolResult {
        match &self.page {
            Some(function) => crate::call_tool_function(function, call).await,
            None => self.own.call(call),
        }
    }
}

/// A KV cache on either backend.
enum Cache {
    Cpu(KvCache),
    Gpu(rstar2_gpu::GpuKvCache),
}

impl Cache {
    fn release(&mut self, seq: u64) {
        match self {
            Cache::Cpu(c) => c.release(seq),
            Cache::Gpu(c) => c.release(seq),
        }
    }
}

impl Backend {
    fn cache(&self, capacity: usize) -> Cache {
        match self {
            Backend::Cpu { .. } => Cache::Cpu(KvCache::new(capacity)),
            Backend::Gpu { model, .. } => Cache::Gpu(rstar2_gpu::GpuKvCache::new(model, capacity)),
        }
    }

    /// Appends `chunks[i]` to sequence `seqs[i]`; the logits after each chunk.
    async fn extend(&self, cache: &mut Cache, seqs: &[u64], chunks: &[&[u32]]) -> Vec<Vec<f32>> {
        match (self, cache) {
            (Backend::Cpu { model, .. }, Cache::Cpu(c)) => model.extend(c, seqs, chunks).expect("the cache holds the step's trajectories"),
            (Backend::Gpu { model, .. }, Cache::Gpu(c)) => model.extend_async(c, seqs, chunks).await.expect("the cache holds the step's trajectories"),
            _ => unreachable!("a cache of the backend's own kind"),
        }
    }

    /// One update: log-probs of `targets` over `batch`, the loss gradient per row from `dloss`
    /// (given the log-probs), backward, global-norm clipping to `max_norm`, AdamW at `lr`.
    /// Returns the log-probs.
    async fn update(&mut self, batch: &Batch, targets: &[u32], dloss: impl FnOnce(&[f32]) -> Vec<f32>, max_norm: f32, lr: f32) -> Vec<f32> {
        match self {
            Backend::Cpu { model, opt } => {
                let mut fwd = model.forward(batch);
                let lp = fwd.logprobs(targets, model.config.vocab_size);
                let mut grads = Params::zeros(&model.config);
                model.backward(&fwd, &dloss(&lp), &mut grads);
                rstar2_model::clip_grad_norm(&mut grads, max_norm);
                opt.update(&mut model.params, &grads, lr);
                model.invalidate_decode_weights();
                lp
            }
            Backend::Gpu { model, opt } => {
                let mut fwd = model.forward(batch);
                let lp = model.logprobs_async(&mut fwd, targets).await;
                let grads = model.zero_grads();
                model.backward(&fwd, &dloss(&lp), &grads);
                model.clip_grad_norm_async(&grads, max_norm).await;
                opt.update(model, &grads, lr);
                model.invalidate_decode_weights();
                lp
            }
        }
    }
}
