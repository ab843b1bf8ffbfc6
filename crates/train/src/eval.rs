//! Evaluation: pass@1 averaged over n samples on held-out problems, pass@k for k = 1, 2, 4, 8
//! (the unbiased estimator from those n samples), tool use, response length.

use std::collections::BTreeMap;

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
    /// Standard error of pass@1 over problems (each problem's mean over its samples).
    pub stderr: f64,
    /// Samples per problem (the n of pass@k).
    pub k: usize,
    /// pass@k for k = 1, 2, 4, 8 up to the samples per problem: the unbiased estimator
    /// ([`pass_at_k`]) averaged over problems, with its standard error over problems.
    #[serde(default)]
    pub pass_at_k: BTreeMap<usize, (f64, f64)>,
    /// The same per problem kind (without the standard error).
    #[serde(default)]
    pub per_kind_pass_at_k: BTreeMap<String, BTreeMap<usize, f64>>,
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

/// The k values pass@k is reported for.
pub const PASS_K: [usize; 4] = [1, 2, 4, 8];

/// The unbiased estimator of pass@k from `n` samples of which `c` are correct (Chen et al.
/// 2021): 1 - C(n-c, k) / C(n, k), the probability that k samples drawn without replacement
/// from the n include a correct one; computed as their product form, which never forms the
/// large binomials.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(k >= 1 && k <= n && c <= n, "pass@{k} needs 1 <= k <= n (n = {n}, c = {c})");
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// Mean and standard error of `b - a` over problems evaluated by both (paired), which is much
/// less noisy than comparing the two means.
pub fn paired_difference(a: &EvalResult, b: &EvalResult) -> Option<(f64, f64)> {
    if a.per_problem.len() != b.per_problem.len() || a.per_problem.is_empty() {
        return None;
    }
    let d: Vec<f64> = a.per_problem.iter().zip(&b.per_problem).map(|(x, y)| y - x).collect();
    Some(mean_and_stderr(&d))
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

pub fn summarize(episodes: &[Episode], tasks: &[Task], k: usize, seconds: f64) -> EvalResult {
    let n = episodes.len().max(1) as f64;
    let reward = |e: &Episode| f64::from(e.reward.unwrap_or(0.0));
    let per_problem: Vec<f64> = episodes.chunks(k).map(|c| c.iter().map(reward).sum::<f64>() / k as f64).collect();
    let (mean, stderr) = mean_and_stderr(&per_problem);
    let correct: Vec<usize> = episodes.chunks(k).map(|c| c.iter().filter(|e| reward(e) > 0.0).count()).collect();
    let ks: Vec<usize> = PASS_K.iter().copied().filter(|&j| j <= k).collect();
    let mut pass_k = BTreeMap::new();
    let mut per_kind_pass_k: BTreeMap<String, BTreeMap<usize, f64>> = BTreeMap::new();
    for &j in &ks {
        let values: Vec<f64> = correct.iter().map(|&c| pass_at_k(k, c, j)).collect();
        let (m, se) = mean_and_stderr(&values);
        pass_k.insert(j, (m, se));
        let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (task, v) in tasks.iter().zip(&values) {
            by_kind.entry(&task.kind).or_default().push(*v);
        }
        for (kind, vs) in by_kind {
            per_kind_pass_k.entry(kind.to_string()).or_default().insert(j, mean_and_stderr(&vs).0);
        }
    }
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
        stderr,
        k,
        pass_at_k: pass_k,
        per_kind_pass_at_k: per_kind_pass_k,
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

/// "pass@1 0.512 ± 0.020, pass@2 ..., pass@8 ..." for a log line.
pub fn describe_pass_at_k(r: &EvalResult) -> String {
    r.pass_at_k.iter().map(|(k, (m, se))| format!("pass@{k} {m:.3} ± {se:.3}")).collect::<Vec<_>>().join(", ")
}

/// Mean and standard error of the mean (0 for fewer than two values).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every k-subset of n samples, c of them correct: the share of subsets with a correct one.
    fn brute_force(n: usize, c: usize, k: usize) -> f64 {
        let (mut with, mut all) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize == k {
                all += 1;
                // Samples 0..c are the correct ones.
                if mask & ((1u32 << c) - 1) != 0 {
                    with += 1;
                }
            }
        }
        with as f64 / all as f64
    }

    #[test]
    fn pass_at_k_matches_enumeration() {
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let (got, want) = (pass_at_k(n, c, k), brute_force(n, c, k));
                    assert!((got - want).abs() < 1e-12, "n {n} c {c} k {k}: {got} vs {want}");
                }
            }
        }
        // Hand values: pass@1 is c/n; 2 of 4 correct, pass@2 = 1 - C(2,2)/C(4,2) = 5/6.
        assert!((pass_at_k(8, 3, 1) - 3.0 / 8.0).abs() < 1e-15);
        assert!((pass_at_k(4, 2, 2) - 5.0 / 6.0).abs() < 1e-15);
        assert_eq!(pass_at_k(8, 0, 8), 0.0);
        assert_eq!(pass_at_k(8, 1, 8), 1.0);
    }

    #[test]
    fn mean_and_stderr_by_hand() {
        let (m, se) = mean_and_stderr(&[1.0, 0.0, 0.5, 0.5]);
        assert_eq!(m, 0.5);
        // Sample variance (0.25 + 0.25 + 0 + 0) / 3 = 1/6; stderr sqrt(1/6 / 4).
        assert!((se - (1.0f64 / 24.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_and_stderr(&[0.3]), (0.3, 0.0));
    }
}
