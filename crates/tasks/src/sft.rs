//! Non-reasoning SFT traces (reference §6) in the exact chat format of the rollouts: a short
//! reason, a tool call, the real sandbox output shown as the rollout engine shows it, and the
//! boxed answer. Some traces make a failing first call (a syntax or name error) and correct it;
//! some answer without the tool; and, on purpose, some run a plausible but wrong program
//! ([`crate::Flawed`]) and box what it prints: the paper's SFT teaches the format, not the
//! solutions, so the policy after SFT mixes right and wrong programs and RL has to find out,
//! from the reward alone, which ones earn it. Tool-response tokens carry no loss, as in RL.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar2_model::Tokenizer;
use rstar2_rollout::ChatFormat;
use rstar2_rollout::chat::TOOL_NAME;
#[cfg(not(target_arch = "wasm32"))]
use rstar2_sandbox::{Sandbox, ToolCall};
use rstar2_sandbox::{Status, ToolResult};
use serde::{Deserialize, Serialize};

use crate::{Task, TaskError};

/// Shares of the trace styles (the rest are clean single-call traces).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftMix {
    /// Answer without calling the tool.
    pub direct: f64,
    /// A failing first call, then a corrected one.
    pub retry: f64,
    /// Of the traces that call the tool on a problem with a plausible wrong program, the share
    /// that runs it (and answers what it prints, wrongly), whatever the other styles.
    pub wrong: f64,
}

impl Default for SftMix {
    fn default() -> Self {
        SftMix { direct: 0.15, retry: 0.2, wrong: 0.0 }
    }
}

/// A trace as text segments; `true` marks model text (trained on), `false` prompt and tool text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftTrace {
    /// The task's id.
    pub id: String,
    /// Its segments, in order.
    pub segments: Vec<(String, bool)>,
    /// Whether its program is the task's plausible wrong one (its answer is wrong).
    #[serde(default)]
    pub flawed: bool,
}

/// A tokenized trace: `mask[i]` is 1 where `tokens[i]` is model text (a training target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// 1 for model tokens.
    pub mask: Vec<u8>,
}

/// The next-token targets of examples packed in order, one per token (0 after each example's
/// last), and the weight of each: 1 where the target is a model token, else 0.
pub fn next_token_targets(examples: &[&SftExample]) -> (Vec<u32>, Vec<f32>) {
    let (mut targets, mut mask) = (Vec::new(), Vec::new());
    for e in examples {
        for t in 0..e.tokens.len() {
            let next = t + 1 < e.tokens.len();
            targets.push(if next { e.tokens[t + 1] } else { 0 });
            mask.push(if next { f32::from(e.mask[t + 1]) } else { 0.0 });
        }
    }
    (targets, mask)
}

impl SftTrace {
    /// Tokenizes segment by segment, exactly as the rollout engine builds its token stream.
    pub fn tokenize(&self, tokenizer: &Tokenizer) -> SftExample {
        let mut tokens = Vec::new();
        let mut mask = Vec::new();
        for (text, trained) in &self.segments {
            let ids = tokenizer.encode(text);
            mask.extend(std::iter::repeat_n(u8::from(*trained), ids.len()));
            tokens.extend(ids);
        }
        SftExample { tokens, mask }
    }

    /// The whole text.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.0.as_str()).collect()
    }
}

/// The assistant text of a tool call of `code`, ending the turn.
pub fn tool_call_text(code: &str) -> String {
    let code = serde_json::to_string(code).expect("string");
    format!("\n<tool_call>\n{{\"name\": \"{TOOL_NAME}\", \"arguments\": {{\"code\": {code}, \"input\": \"\"}}}}\n</tool_call>")
}

/// A broken version of working code: a missing parenthesis or a misspelt `print`.
fn break_code(code: &str, rng: &mut impl Rng) -> String {
    if rng.random_bool(0.5) && code.ends_with(')') { code[..code.len() - 1].to_string() } else { code.replacen("print(", "pirnt(", 1) }
}

/// Traces for synthetic tasks (those with code), their tool calls run in `sandbox`. Fails if a
/// task's correct code does not print its answer, or its wrong program ([`crate::Flawed`]) does
/// not print the wrong answer computed for it.
#[cfg(not(target_arch = "wasm32"))]
pub fn build_traces(tasks: &[Task], sandbox: &Sandbox, chat: &ChatFormat, mix: &SftMix, seed: u64) -> Result<Vec<SftTrace>, TaskError> {
    build_traces_with(tasks, chat, mix, seed, |codes| run_all(sandbox, codes))
}

/// [`build_traces`] with the tool calls run by `run_all` (every program, in order, one result
/// each): how a page without a sandbox pool builds them, one interpreter at a time.
pub fn build_traces_with(tasks: &[Task], chat: &ChatFormat, mix: &SftMix, seed: u64, run_all: impl FnOnce(&[String]) -> Vec<ToolResult>) -> Result<Vec<SftTrace>, TaskError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    #[derive(Clone, Copy, PartialEq)]
    enum Style {
        Clean,
        Retry,
        Direct,
    }
    struct Plan<'a> {
        task: &'a Task,
        style: Style,
        /// The task's wrong program, where the trace runs it.
        flawed: Option<&'a crate::Flawed>,
        /// The program the trace runs.
        code: &'a str,
        /// That program broken, for a retry.
        broken: Option<String>,
    }
    let plans: Vec<Plan> = tasks
        .iter()
        .filter(|t| t.code.is_some())
        .map(|t| {
            let u: f64 = rng.random();
            let style = if u < mix.direct {
                Style::Direct
            } else if u < mix.direct + mix.retry {
                Style::Retry
            } else {
                Style::Clean
            };
            // Drawn for every task, so the other styles do not depend on `wrong`.
            let w: f64 = rng.random();
            let flawed = t.flawed.as_ref().filter(|_| style != Style::Direct && w < mix.wrong);
            let code = flawed.map_or(t.code.as_deref().unwrap(), |f| f.code.as_str());
            let broken = (style == Style::Retry).then(|| break_code(code, &mut rng));
            Plan { task: t, style, flawed, code, broken }
        })
        .collect();
    // Every call this needs, run across the pool at once.
    let mut calls: Vec<String> = Vec::new();
    for plan in &plans {
        if plan.style != Style::Direct {
            calls.push(plan.code.to_string());
        }
        if let Some(b) = &plan.broken {
            calls.push(b.clone());
        }
    }
    let results = run_all(&calls);
    assert_eq!(results.len(), calls.len(), "one result per tool call");
    let mut results = results.into_iter();
    let openers = [" Let me compute this with Python.", " I will use Python for this.", " This needs a computation."];
    let mut traces = Vec::with_capacity(plans.len());
    for Plan { task: t, style, flawed, code, broken } in plans {
        let mut segments = vec![(chat.prompt(&t.question), false)];
        let opener = openers[rng.random_range(0..openers.len())];
        if style == Style::Direct {
            segments.push((format!(" I can answer this directly.</reason>\n<answer>\\boxed{{{}}}</answer>{}", t.answer, chat.end_of_turn), true));
            traces.push(SftTrace { id: t.id.clone(), segments, flawed: false });
            continue;
        }
        let ran = results.next().expect("one result per call");
        let printed = ran.stdout.trim().to_string();
        // What the program must print: the answer, or the wrong program's own (wrong) answer.
        let expected = flawed.map_or(&t.answer, |f| &f.answer);
        if ran.status != Status::Ok || printed != *expected || (flawed.is_some() && printed == t.answer) {
            return Err(TaskError::WrongSolution { id: t.id.clone(), got: format!("{printed} {}", ran.stderr), expected: expected.clone() });
        }
        if let Some(b) = broken {
            let bad = results.next().expect("one result per call");
            segments.push((format!("{opener}{}{}", tool_call_text(&b), chat.end_of_turn), true));
            segments.push((chat.tool_responses(&[chat.tool_result_text(&bad)]), false));
            segments.push((format!(" The code failed. Let me fix it.{}{}", tool_call_text(code), chat.end_of_turn), true));
        } else {
            segments.push((format!("{opener}{}{}", tool_call_text(code), chat.end_of_turn), true));
        }
        segments.push((chat.tool_responses(&[chat.tool_result_text(&ran)]), false));
        segments.push((format!(" The result is {printed}.</reason>\n<answer>\\boxed{{{printed}}}</answer>{}", chat.end_of_turn), true));
        traces.push(SftTrace { id: t.id.clone(), segments, flawed: flawed.is_some() });
    }
    Ok(traces)
}

#[cfg(not(target_arch = "wasm32"))]
fn run_all(sandbox: &Sandbox, codes: &[String]) -> Vec<ToolResult> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<ToolResult>>> = codes.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..sandbox.workers().max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= codes.len() {
                        break;
                    }
                    *slots[i].lock().unwrap() = Some(sandbox.run_blocking(ToolCall::new(codes[i].clone())));
                }
            });
        }
    });
    slots.into_iter().map(|m| m.into_inner().unwrap().expect("every call ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_call_text_parses_back() {
        let code = "a,b=0,1\nfor _ in range(5):\n    a,b=b,a+b\nprint(\"x\", a)";
        let text = format!(" Let me.{}<|im_end|>", tool_call_text(code));
        let calls = rstar2_rollout::parse_tool_calls(&text, 1);
        assert_eq!(calls, vec![rstar2_rollout::ParsedCall::Python { code: code.into(), input: String::new() }]);
    }
}
