//! Agentic rollouts: a batch of problems becomes episodes in which the model reasons, calls the
//! Python tool, reads its output and answers.
//!
//! Token ids flow straight through: the prompt is tokenized once, model tokens are appended as
//! sampled, and each tool response is tokenized once and appended (loss mask 0); nothing is
//! re-tokenized. Each engine runs continuous batching over its KV cache on its own thread: all
//! sequences that have tokens to feed go through one `extend` per step. A sequence that calls
//! the tool keeps its cache while the sandbox runs the call (asynchronously, the moment the
//! turn ends); its response is then prefilled onto the cache. A [`scheduler::Ledger`] admits a
//! trajectory on the engine with the most free capacity once prompt + budget fit, keeps it
//! there, and releases the reservation when it finishes.
//!
//! ```no_run
//! use rstar2_rollout::{generate, Request, RolloutConfig, engine::CpuEngine};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::path::Path::new("models/tiny");
//! let config = rstar2_model::Config::from_file(&dir.join("config.json"))?;
//! let model = rstar2_model::Model::new(config.clone(), rstar2_model::Params::load(dir, &config)?);
//! let tokenizer = rstar2_model::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
//! let sandbox = rstar2_sandbox::Sandbox::new(rstar2_sandbox::SandboxConfig::in_process())?;
//! let requests = vec![Request { id: "q1".into(), question: "What is 123 * 457?".into(), answer: Some("56211".into()) }];
//! let mut engine = CpuEngine::new(&model, 16_384);
//! let out = generate(vec![&mut engine], &tokenizer, &sandbox, &requests, &RolloutConfig::default(), None)?;
//! println!("{}", out.episodes[0].text);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod chat;
pub mod engine;
pub mod episode;
pub mod packed;
#[cfg(not(target_arch = "wasm32"))]
mod run;
pub mod sample;
pub mod scheduler;
pub mod trajectory;

pub use chat::{ChatFormat, ParsedCall, parse_tool_calls};
pub use episode::{Episode, FinishReason, ToolCallRecord};
#[cfg(not(target_arch = "wasm32"))]
pub use run::{Generated, ProgressFn, RolloutMetrics, generate};
pub use sample::SamplingConfig;

use serde::{Deserialize, Serialize};

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its id (copied into episodes).
    pub id: String,
    /// The question text, placed in the user turn.
    pub question: String,
    /// The ground truth, when known; episodes then carry a reward.
    pub answer: Option<String>,
}

/// How tool calls are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolDispatch {
    /// Each call goes to the sandbox the moment its turn ends; other sequences keep decoding.
    #[default]
    Async,
    /// The baseline of static frameworks: an engine admits a wave of trajectories, decodes
    /// until every one of them has ended its turn, runs all their calls as one batch, and
    /// admits the next wave only when the whole wave is done. Deterministic for a fixed
    /// engine, which makes runs reproducible.
    Lockstep,
}

/// Rollout settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutConfig {
    /// Prompt and tool-response text.
    pub chat: ChatFormat,
    /// Sampling.
    pub sampling: SamplingConfig,
    /// Samples per problem.
    pub samples: usize,
    /// Response budget in tokens, tool output included (8K in stage 1 of the paper).
    pub max_response_tokens: usize,
    /// Assistant turns at most.
    pub max_turns: u32,
    /// Seed: trajectory t samples from its own stream derived from (seed, t).
    pub seed: u64,
    /// How tool calls are executed.
    pub dispatch: ToolDispatch,
    /// Where the reward looks for the answer.
    pub answer_scope: rstar2_grpo::reward::AnswerScope,
    /// Tokens one engine step feeds beyond the single tokens of decoding sequences: prompts and
    /// tool responses are prefilled in chunks that share this budget (chunked prefill).
    pub step_tokens: usize,
    /// The first trajectory's number: a shard of a larger batch (another device's or rank's
    /// share of the same step) starts where its requests start, so every trajectory samples
    /// from the stream it would have had in the whole batch.
    pub first_trajectory: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            chat: ChatFormat::rstar2(),
            sampling: SamplingConfig::default(),
            samples: 1,
            max_response_tokens: 8192,
            max_turns: 10,
            seed: 0,
            dispatch: ToolDispatch::Async,
            answer_scope: Default::default(),
            step_tokens: 256,
            first_trajectory: 0,
        }
    }
}

/// Why a rollout could not run.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The engine's KV cache refused tokens.
    #[error("engine: {0}")]
    Kv(rstar2_model::kv::KvError),
    /// A trajectory can never fit.
    #[error("problem {id}: prompt of {prompt} tokens + budget of {budget} needs {needed} KV tokens; the largest engine holds {largest}")]
    TooLarge {
        /// The problem.
        id: String,
        /// Prompt tokens.
        prompt: usize,
        /// Response budget.
        budget: usize,
        /// Their sum.
        needed: usize,
        /// The largest engine capacity (or longest sequence).
        largest: usize,
    },
    /// The tokenizer lacks a token the chat format needs.
    #[error("the tokenizer has no token {0:?}, which the chat format uses to end a turn")]
    MissingToken(String),
    /// No engine was given.
    #[error("no engine to generate with")]
    NoEngine,
    /// An engine thread panicked.
    #[error("engine {0} failed: {1}")]
    EngineFailed(usize, String),
}

// By hand, not `#[from]`: that would also make the KV error this one's `source()`, which the
// message already includes, and anyhow's `{:#}` would print it twice.
impl From<rstar2_model::kv::KvError> for RolloutError {
    fn from(e: rstar2_model::kv::KvError) -> Self {
        RolloutError::Kv(e)
    }
}
