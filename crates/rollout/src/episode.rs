//! What one trajectory produced, serializable to JSONL.

use rstar2_grpo::penalty::ToolUsage;
use rstar2_sandbox::{Status, ToolResult};
use serde::{Deserialize, Serialize};

/// Why a trajectory stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A turn without a tool call that gives an answer (`<answer>` or `\boxed`).
    Answered,
    /// A turn without a tool call and without an answer.
    NoToolCall,
    /// The response budget (model and tool tokens) ran out.
    Length,
    /// The turn limit was reached with a tool call still pending.
    MaxTurns,
}

impl FinishReason {
    /// Every reason, for metrics.
    pub const ALL: [FinishReason; 4] = [FinishReason::Answered, FinishReason::NoToolCall, FinishReason::Length, FinishReason::MaxTurns];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Answered => "answered",
            FinishReason::NoToolCall => "no_tool_call",
            FinishReason::Length => "length",
            FinishReason::MaxTurns => "max_turns",
        }
    }
}

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The assistant turn (from 1) that made it.
    pub turn: u32,
    /// The code, when the call parsed.
    pub code: Option<String>,
    /// Its standard input, when the call parsed.
    pub input: Option<String>,
    /// Why the call could not run (malformed JSON, unknown tool, missing argument).
    pub parse_error: Option<String>,
    /// The sandbox's structured outcome, when it ran.
    pub outcome: Option<ToolResult>,
    /// The text the model was shown.
    pub shown: String,
}

impl ToolCallRecord {
    /// Whether the call failed (did not parse, or did not run to a clean end).
    pub fn failed(&self) -> bool {
        self.parse_error.is_some() || self.outcome.as_ref().is_none_or(|o| o.status != Status::Ok)
    }
}

/// One trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The problem's id.
    pub id: String,
    /// Which of the problem's samples this is.
    pub sample: usize,
    /// The engine that generated it.
    pub engine: usize,
    /// Prompt token ids.
    pub prompt_ids: Vec<u32>,
    /// Prompt and response token ids.
    pub ids: Vec<u32>,
    /// One per response token (`ids[prompt_ids.len()..]`): 1 for model tokens, 0 for tool tokens.
    pub loss_mask: Vec<u8>,
    /// One per response token: the log-prob the sampler drew it with (0 for tool tokens).
    pub logprobs: Vec<f32>,
    /// Assistant turns.
    pub turns: u32,
    /// Every tool call, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The response as text (special tokens included).
    pub text: String,
    /// 1 or 0 against the problem's answer, when it has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward: Option<f32>,
    /// The extracted answer, when the problem has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub extracted: Option<String>,
}

impl Episode {
    /// Response token ids.
    pub fn response_ids(&self) -> &[u32] {
        &self.ids[self.prompt_ids.len()..]
    }

    /// Model-generated tokens.
    pub fn model_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m == 1).count()
    }

    /// This episode as GRPO-RoC selection sees it: its reward and its penalties.
    pub fn candidate(&self) -> rstar2_grpo::select::Candidate {
        let u = self.tool_usage();
        rstar2_grpo::select::Candidate { reward: self.reward.unwrap_or(0.0), penalty: rstar2_grpo::penalty::total_penalty(&u), p_err: rstar2_grpo::penalty::tool_error_penalty(&u) }
    }

    /// Counts for the GRPO-RoC penalties.
    pub fn tool_usage(&self) -> ToolUsage {
        ToolUsage {
            tool_calls: self.tool_calls.len() as u32,
            failed_tool_calls: self.tool_calls.iter().filter(|c| c.failed()).count() as u32,
            answer_tags: self.text.matches("<answer>").count() as u32,
            turns: self.turns,
        }
    }
}
