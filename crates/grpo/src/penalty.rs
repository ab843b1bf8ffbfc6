//! Per-trajectory penalties that rank correct rollouts in RoC down-sampling (paper §2.2).
//! Neither enters the reward.

use serde::{Deserialize, Serialize};

/// What the penalties need to know about one rollout, counted structurally by the rollout
/// engine (not by searching the text for "error").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolUsage {
    /// Tool calls the model made (parse failures included).
    pub tool_calls: u32,
    /// Of those, calls that failed: unparsable call, unknown tool, execution error, timeout or
    /// any limit.
    pub failed_tool_calls: u32,
    /// `<answer>` tags in the model's text.
    pub answer_tags: u32,
    /// Assistant turns.
    pub turns: u32,
}

/// p_err: the fraction of failed tool calls; 0.5 for a rollout with no tool call (the paper's
/// nudge towards using the tool).
pub fn tool_error_penalty(u: &ToolUsage) -> f64 {
    if u.tool_calls == 0 { 0.5 } else { f64::from(u.failed_tool_calls.min(u.tool_calls)) / f64::from(u.tool_calls) }
}

/// p_format: 1 without an `<answer>` tag, else `min(1, (answer tags - 1) / turns)`.
pub fn format_penalty(u: &ToolUsage) -> f64 {
    if u.answer_tags == 0 { 1.0 } else { (f64::from(u.answer_tags - 1) / f64::from(u.turns.max(1))).min(1.0) }
}

/// p_err + p_format.
pub fn total_penalty(u: &ToolUsage) -> f64 {
    tool_error_penalty(u) + format_penalty(u)
}

/// The released code's text heuristics, for comparison runs: p_err counts `<tool_response>`
/// blocks containing "error" (any case); p_format counts assistant turns after the first from
/// `<|im_start|>assistant ... <|im_end|>` pairs in the response decoded with special tokens, and
/// gives 1 when the answer tags are missing or unbalanced. Note that this scores a single-turn
/// answer without tool calls 1.0, and a timeout or a JSON parse failure usually as no error.
pub fn release_penalties(response_with_special_tokens: &str) -> (f64, f64) {
    let blocks = between_all(response_with_special_tokens, "<tool_response>", "</tool_response>");
    let p_err = if blocks.is_empty() { 0.5 } else { blocks.iter().filter(|b| b.to_lowercase().contains("error")).count() as f64 / blocks.len() as f64 };
    let text = response_with_special_tokens;
    let open = text.matches("<answer>").count();
    let close = text.matches("</answer>").count();
    let closed = between_all(text, "<answer>", "</answer>").len();
    let p_format = if open == 0 || close == 0 || open != closed || close != closed {
        1.0
    } else {
        let turns = between_all(text, "<|im_start|>assistant", "<|im_end|>").len();
        if turns == 0 { 1.0 } else { ((closed - 1) as f64 / turns as f64).min(1.0) }
    };
    (p_err, p_format)
}

/// Non-overlapping `open ... close` spans, shortest match first (like a lazy regex).
fn between_all<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_penalties_by_hand() {
        let clean = ToolUsage { tool_calls: 2, failed_tool_calls: 0, answer_tags: 1, turns: 3 };
        assert_eq!((tool_error_penalty(&clean), format_penalty(&clean)), (0.0, 0.0));
        let one_bad = ToolUsage { tool_calls: 4, failed_tool_calls: 1, answer_tags: 1, turns: 5 };
        assert_eq!(total_penalty(&one_bad), 0.25);
        let no_tool = ToolUsage { tool_calls: 0, failed_tool_calls: 0, answer_tags: 1, turns: 1 };
        assert_eq!(total_penalty(&no_tool), 0.5);
        let no_answer = ToolUsage { tool_calls: 1, failed_tool_calls: 1, answer_tags: 0, turns: 2 };
        assert_eq!(total_penalty(&no_answer), 2.0);
        let three_answers = ToolUsage { tool_calls: 1, failed_tool_calls: 0, answer_tags: 3, turns: 4 };
        assert_eq!(format_penalty(&three_answers), 0.5);
        let many = ToolUsage { tool_calls: 1, failed_tool_calls: 0, answer_tags: 9, turns: 2 };
        assert_eq!(format_penalty(&many), 1.0);
    }

    #[test]
    fn release_heuristics_reproduce_the_reference_quirks() {
        // A single-turn positive with no tool call: 0.5 + 1.0 (first assistant header is in the prompt).
        let single = "<reason>easy</reason><answer>\\boxed{4}</answer><|im_end|>";
        assert_eq!(release_penalties(single), (0.5, 1.0));
        // One clean call: 0 + 0.
        let clean = "x<tool_call>{}</tool_call><|im_end|><|im_start|>user<tool_response>\nTool call success\nstdout: 4\n</tool_response><|im_end|>\n<|im_start|>assistant\n<reason>ok</reason><answer>\\boxed{4}</answer><|im_end|>";
        assert_eq!(release_penalties(clean), (0.0, 0.0));
        // A timeout mentions no "error": the heuristic misses it.
        let timeout = clean.replace("Tool call success\\nstdout: 4", "Tool call failure\nreason: worker_timeout");
        assert_eq!(release_penalties(&timeout).0, 0.0);
        let err = clean.replace("stdout: 4", "stderr: NameError: x");
        assert_eq!(release_penalties(&err).0, 1.0);
    }
}
