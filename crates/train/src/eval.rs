//! Evaluation: pass@1 averaged over k samples on held-out problems, tool use, response length.

use std::collections::BTreeMap;

use rstar2_gpu::Policy;
use rstar2_model::Tokenizer;
use rstar2_rollout::{ChatFormat, Episode, RolloutConfig, SamplingConfig, ToolDispatch};
use rstar2_sandbox::Sandbox;
use rstar2_tasks::Task;
use serde::{Deserialize, Serialize};

use crate::config::EvalConfig;
use crate::progress;
use crate::replicas::Replicas;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean reward over problems and samples.
    pub pass_at_1: f64,
    /// Standard error of pass@1 over problems (each problem's mean over k).
    pub stderr: f64,
    pub k: usize,
    pub problems: usize,
    pub per_kind: BTreeMap<String, f64>,
    /// pass@1 by the data set's difficulty level (MATH: 1..=5), where rows have one.
    #[serde(default)]
    pub per_level: BTreeMap<u8, f64>,
    pub tool_calls_per_episode: f64,
    /// Failed calls / calls, over all episodes.
    pub tool_error_ratio: f64,
    /// Failed calls / calls, over correct episodes.
    pub positive_tool_error_ratio: f64,
    /// Share of episodes that call the tool at least once.
    pub tool_use_rate: f64,
    pub response_tokens: f64,
    pub seconds: f64,
    /// Each problem's mean reward over its k samples, in problem order (for paired comparisons
    /// between evaluations of the same problems).
    #[serde(default)]
    pub per_problem: Vec<f64>,
}

/// Mean and standard error of `b - a` over problems evaluated by both (paired), which is much
/// less noisy than comparing the two means.
pub fn paired_difference(a: &EvalResult, b: &EvalResult) -> Option<(f64, f64)> {
    if a.per_problem.len() != b.per_problem.len() || a.per_problem.is_empty() {
        return None;
    }
    let d: Vec<f64> = a.per_problem.iter().zip(&b.per_problem).map(|(x, y)| y - x).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Some((mean, (var / n).sqrt()))
}

/// Failed calls over calls in the episodes (0 when there are none).
pub fn tool_error_ratio<'a>(episodes: impl Iterator<Item = &'a Episode>) -> f64 {
    let (mut calls, mut failed) = (0usize, 0usize);
    for e in episodes {
        calls += e.tool_calls.len();
        failed += e.tool_calls.iter().filter(|c| c.failed()).count();
    }
    if calls == 0 { 0.0 } else { failed as f64 / calls as f64 }
}

/// pass@1 and tool figures of the policy on `tasks`, sampled on every replica of the job.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the run; callers name them all
pub fn evaluate(replicas: &mut Replicas, tokenizer: &Tokenizer, sandbox: &Sandbox, chat: &ChatFormat, tasks: &[Task], config: &EvalConfig, seed: u64, label: &str) -> anyhow::Result<EvalResult> {
    let rollout = RolloutConfig {
        chat: chat.clone(),
        sampling: SamplingConfig { temperature: config.temperature, top_p: 1.0, top_k: 0 },
        samples: config.samples,
        max_response_tokens: config.max_response_tokens,
        max_turns: config.max_turns,
        seed,
        dispatch: ToolDispatch::Lockstep,
        answer_scope: if config.answer_anywhere { rstar2_grpo::reward::AnswerScope::Anywhere } else { rstar2_grpo::reward::AnswerScope::AnswerTag },
        ..RolloutConfig::default()
    };
    let requests: Vec<_> = tasks.iter().map(Task::request).collect();
    let bar = progress::bar((requests.len() * config.samples) as u64, &format!("eval {label}"));
    let on_episode = |_: &Episode, tokens: usize| {
        bar.inc(1);
        bar.set_message(format!("{:.0} tok/s", tokens as f64 / bar.elapsed().as_secs_f64().max(1e-3)));
    };
    let out = replicas.rollout(tokenizer, sandbox, chat, &requests, &rollout, Some(&on_episode))?;
    bar.finish_and_clear();
    Ok(summarize(&out.episodes, tasks, config.samples, out.metrics.wall_seconds))
}

/// KV capacity for every trajectory at once where the device has room for it; otherwise as
/// many as its KV budget holds (trajectories then queue for room), and at least one.
pub fn kv_capacity(policy: &Policy, requests: &[rstar2_rollout::Request], tokenizer: &Tokenizer, chat: &ChatFormat, max_response: usize, samples: usize) -> usize {
    let longest_prompt = requests.iter().map(|r| tokenizer.encode(&chat.prompt(&r.question)).len()).max().unwrap_or(0);
    let per = longest_prompt + max_response;
    (per * requests.len() * samples).min(policy.kv_token_budget()).max(per)
}

pub fn summarize(episodes: &[Episode], tasks: &[Task], k: usize, seconds: f64) -> EvalResult {
    let n = episodes.len().max(1) as f64;
    let reward = |e: &Episode| f64::from(e.reward.unwrap_or(0.0));
    let per_problem: Vec<f64> = episodes.chunks(k).map(|c| c.iter().map(reward).sum::<f64>() / k as f64).collect();
    let mean = per_problem.iter().sum::<f64>() / per_problem.len().max(1) as f64;
    let var = per_problem.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (per_problem.len().max(2) - 1) as f64;
    let mut per_kind: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut per_level: BTreeMap<u8, (f64, usize)> = BTreeMap::new();
    for (task, p) in tasks.iter().zip(&per_problem) {
        let slot = per_kind.entry(task.kind.clone()).or_default();
        slot.0 += p;
        slot.1 += 1;
        if task.level > 0 {
            let slot = per_level.entry(task.level).or_default();
            slot.0 += p;
            slot.1 += 1;
        }
    }
    EvalResult {
        pass_at_1: mean,
        stderr: (var / per_problem.len().max(1) as f64).sqrt(),
        k,
        problems: per_problem.len(),
        per_kind: per_kind.into_iter().map(|(k, (s, c))| (k, s / c as f64)).collect(),
        per_level: per_level.into_iter().map(|(k, (s, c))| (k, s / c as f64)).collect(),
        tool_calls_per_episode: episodes.iter().map(|e| e.tool_calls.len() as f64).sum::<f64>() / n,
        tool_error_ratio: tool_error_ratio(episodes.iter()),
        positive_tool_error_ratio: tool_error_ratio(episodes.iter().filter(|e| reward(e) > 0.0)),
        tool_use_rate: episodes.iter().filter(|e| !e.tool_calls.is_empty()).count() as f64 / n,
        response_tokens: episodes.iter().map(|e| e.loss_mask.len() as f64).sum::<f64>() / n,
        seconds,
        per_problem,
    }
}
