//! One trajectory's bookkeeping, the same for every driver of generation (the threaded loop of
//! [`crate::generate`], a browser page's awaited loop): sampled tokens joining the response, a
//! turn ending in tool calls or an answer, tool responses appended (loss mask 0), and the
//! finished [`Episode`] with its reward.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rstar2_model::Tokenizer;
use rstar2_sandbox::{ToolCall, ToolResult};

use crate::chat::{ParsedCall, parse_tool_calls};
use crate::episode::{Episode, FinishReason, ToolCallRecord};
use crate::{Request, RolloutConfig};

/// A trajectory in progress.
pub struct Trajectory {
    /// Prompt token ids.
    pub prompt: Arc<Vec<u32>>,
    /// Response token ids so far (model and tool tokens).
    pub response: Vec<u32>,
    /// One per response token: 1 for model tokens, 0 for tool tokens.
    pub mask: Vec<u8>,
    /// One per response token: the sampler's log-prob (0 for tool tokens).
    pub logprobs: Vec<f32>,
    /// Tokens to feed on the next step (not yet in the engine's cache).
    pub feed: Vec<u32>,
    /// Where the current assistant turn starts in `response`.
    turn_start: usize,
    /// Assistant turns ended so far.
    pub turns: u32,
    /// Every tool call so far.
    pub calls: Vec<ToolCallRecord>,
    /// This trajectory's sampling generator.
    pub rng: ChaCha8Rng,
}

/// What ending a turn leads to.
#[derive(Debug)]
pub enum TurnEnd {
    /// The trajectory is done.
    Finished(FinishReason),
    /// These calls must run (index into [`Trajectory::calls`], the call); then
    /// [`Trajectory::deliver`] their results. Empty when every call failed to parse.
    Calls(Vec<(usize, ToolCall)>),
}

impl Trajectory {
    /// Trajectory number `index` of a run under `config` (its generator depends on both), fed its
    /// prompt first.
    pub fn new(prompt: Arc<Vec<u32>>, config: &RolloutConfig, index: u64) -> Self {
        let seed = config.seed ^ (config.first_trajectory + index).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Trajectory { feed: prompt.to_vec(), prompt, response: Vec::new(), mask: Vec::new(), logprobs: Vec::new(), turn_start: 0, turns: 0, calls: Vec::new(), rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// A sampled (token, log-prob) joins the response and is the next token to feed; returns
    /// whether the turn ends with it (`end_token`, or the response budget reached).
    pub fn take_token(&mut self, (token, logprob): (u32, f32), end_token: u32, config: &RolloutConfig) -> bool {
        self.response.push(token);
        self.mask.push(1);
        self.logprobs.push(logprob);
        self.feed.clear();
        self.feed.push(token);
        token == end_token || self.response.len() >= config.max_response_tokens
    }

    /// The turn ended: the trajectory finishes, or its calls must run (calls that did not parse
    /// are recorded with their error, which the model is shown).
    pub fn end_turn(&mut self, tokenizer: &Tokenizer, config: &RolloutConfig) -> TurnEnd {
        self.turns += 1;
        let turn_text = tokenizer.decode(&self.response[self.turn_start..]);
        if self.response.len() >= config.max_response_tokens {
            return TurnEnd::Finished(FinishReason::Length);
        }
        let parsed = parse_tool_calls(&turn_text, config.chat.max_calls_per_turn);
        if parsed.is_empty() {
            let answered = turn_text.contains("<answer>") || turn_text.contains("\\boxed");
            return TurnEnd::Finished(if answered { FinishReason::Answered } else { FinishReason::NoToolCall });
        }
        if self.turns >= config.max_turns {
            return TurnEnd::Finished(FinishReason::MaxTurns);
        }
        let mut to_run = Vec::new();
        for call in parsed {
            let index = self.calls.len();
            match call {
                ParsedCall::Python { code, input } => {
                    to_run.push((index, if input.is_empty() { ToolCall::new(code.clone()) } else { ToolCall::with_stdin(code.clone(), input.clone()) }));
                    self.calls.push(ToolCallRecord { turn: self.turns, code: Some(code), input: Some(input), parse_error: None, outcome: None, shown: String::new() });
                }
                ParsedCall::Invalid(message) => {
                    self.calls.push(ToolCallRecord { turn: self.turns, code: None, input: None, parse_error: Some(message.clone()), outcome: None, shown: message });
                }
            }
        }
        TurnEnd::Calls(to_run)
    }

    /// The turn's tool results: shown to the model as one tool-response segment, appended and
    /// queued to feed; returns its length in tokens, or [`FinishReason::Length`] when it does
    /// not fit the budget.
    pub fn deliver(&mut self, results: Vec<(usize, ToolResult)>, tokenizer: &Tokenizer, config: &RolloutConfig) -> Result<usize, FinishReason> {
        for (index, result) in results {
            let record = &mut self.calls[index];
            record.shown = config.chat.tool_result_text(&result);
            record.outcome = Some(result);
        }
        let texts: Vec<String> = self.calls.iter().filter(|c| c.turn == self.turns).map(|c| c.shown.clone()).collect();
        let segment = tokenizer.encode(&config.chat.tool_responses(&texts));
        if self.response.len() + segment.len() >= config.max_response_tokens {
            return Err(FinishReason::Length);
        }
        self.response.extend_from_slice(&segment);
        self.mask.extend(std::iter::repeat_n(0, segment.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, segment.len()));
        // The turn's end token was sampled but never fed; it goes in ahead of the response.
        self.feed.extend_from_slice(&segment);
        self.turn_start = self.response.len();
        Ok(segment.len())
    }

    /// The finished episode, its reward verified against the request's answer.
    pub fn into_episode(self, request: &Request, sample: usize, engine: usize, reason: FinishReason, tokenizer: &Tokenizer, config: &RolloutConfig) -> Episode {
        let text = tokenizer.decode(&self.response);
        let mut ids = self.prompt.to_vec();
        ids.extend_from_slice(&self.response);
        let (reward, extracted) = match &request.answer {
            Some(answer) => {
                let v = rstar2_grpo::reward::verify(&text, answer, config.answer_scope, reason == FinishReason::Length);
                (Some(f32::from(v.reward)), v.extracted)
            }
            None => (None, None),
        };
        Episode {
            id: request.id.clone(),
            sample,
            engine,
            prompt_ids: self.prompt.to_vec(),
            ids,
            loss_mask: self.mask,
            logprobs: self.logprobs,
            turns: self.turns,
            tool_calls: self.calls,
            finish_reason: reason,
            text,
            reward,
            extracted,
        }
    }
}
