//! Per-step metrics, per-stage figures, and the run's summary.json, report.md and plots.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{StageConfig, TrainConfig};
use crate::eval::{EvalResult, paired_difference};
use crate::plot::{Series, line_chart, smooth};

/// One line of metrics.jsonl for an RL step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    pub phase: String,
    pub stage: usize,
    pub stage_step: usize,
    pub rl_step: usize,
    /// Mean reward over all sampled rollouts (= their accuracy).
    pub reward_mean: f64,
    pub groups: usize,
    pub kept_groups: usize,
    pub all_correct_groups: usize,
    pub all_wrong_groups: usize,
    pub kept_rollouts: usize,
    /// Failed calls / calls in all correct rollouts sampled (before selection).
    pub positive_tool_error_ratio: f64,
    /// The same over the correct rollouts kept for training (the paper's Fig. 4).
    pub kept_positive_tool_error_ratio: f64,
    pub kept_positive_p_err: Option<f64>,
    pub tool_calls_per_episode: f64,
    pub response_length: f64,
    pub finish_reasons: BTreeMap<String, usize>,
    pub loss: f64,
    pub grad_norm: f32,
    pub lr: f32,
    pub clip_frac_low: f64,
    pub clip_frac_high: f64,
    pub logprob_gap_mean: f64,
    pub logprob_gap_max: f64,
    pub tokens_per_second: f64,
    pub generation_seconds: f64,
    pub step_seconds: f64,
    /// In-process tool threads still stuck in native work after their call was answered
    /// `timeout`, at the end of the step, and how many stuck threads the cap has kept without a
    /// replacement so far (the pool then runs short): [`rstar2_sandbox::Sandbox::abandoned_threads`].
    #[serde(default)]
    pub tool_threads_abandoned: usize,
    #[serde(default)]
    pub tool_threads_held_back: u64,
    /// In-process interpreters lost so far (a call overflowed the native stack or asked for
    /// far more memory than its budget; the call was answered and the interpreter replaced):
    /// [`rstar2_sandbox::Sandbox::lost_interpreters`].
    #[serde(default)]
    pub tool_interpreters_lost: u64,
}

/// Figures of one RL stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSummary {
    pub stage: usize,
    pub steps: usize,
    pub max_response_tokens: usize,
    pub max_turns: u32,
    pub reward_first_steps: f64,
    pub reward_last_steps: f64,
    pub positive_tool_error_ratio_first_steps: f64,
    pub positive_tool_error_ratio_last_steps: f64,
    pub mean_response_length: f64,
    pub seconds: f64,
    pub eval: EvalResult,
}

pub fn read_steps(metrics: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(metrics).unwrap_or_default().lines().filter(|l| l.contains("\"phase\":\"rl\"")).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |a, x| (a.0 + x, a.1 + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

impl StageSummary {
    pub fn new(stage: usize, config: &StageConfig, metrics: &Path, eval: EvalResult) -> Self {
        let steps: Vec<StepMetrics> = read_steps(metrics).into_iter().filter(|s| s.stage == stage).collect();
        let w = (steps.len() / 4).max(1);
        let first = &steps[..w.min(steps.len())];
        let last = &steps[steps.len().saturating_sub(w)..];
        StageSummary {
            stage,
            steps: steps.len(),
            max_response_tokens: config.max_response_tokens,
            max_turns: config.max_turns,
            reward_first_steps: mean(first.iter().map(|s| s.reward_mean)),
            reward_last_steps: mean(last.iter().map(|s| s.reward_mean)),
            positive_tool_error_ratio_first_steps: mean(first.iter().map(|s| s.positive_tool_error_ratio)),
            positive_tool_error_ratio_last_steps: mean(last.iter().map(|s| s.positive_tool_error_ratio)),
            mean_response_length: mean(steps.iter().map(|s| s.response_length)),
            seconds: steps.iter().map(|s| s.step_seconds).sum(),
            eval,
        }
    }
}

fn plots(dir: &Path, steps: &[StepMetrics], evals: &[(f64, f64)]) -> anyhow::Result<()> {
    let boundaries: Vec<f64> = steps.windows(2).filter(|w| w[0].stage != w[1].stage).map(|w| w[1].rl_step as f64).collect();
    let pts = |f: &dyn Fn(&StepMetrics) -> f64| -> Vec<(f64, f64)> { steps.iter().map(|s| (s.rl_step as f64, f(s))).collect() };
    let reward = pts(&|s| s.reward_mean);
    line_chart(
        &dir.join("reward.png"),
        "Reward (training rollouts) and held-out pass@1",
        "RL step",
        "accuracy",
        &[Series::new("reward per step", reward.clone()), Series::new("reward, 5-step mean", smooth(&reward, 5)), Series::new("eval pass@1", evals.to_vec())],
        &boundaries,
    )?;
    let err = pts(&|s| s.positive_tool_error_ratio);
    let kept_err = pts(&|s| s.kept_positive_tool_error_ratio);
    line_chart(
        &dir.join("tool_errors.png"),
        "Tool-error ratio in correct rollouts (5-step mean)",
        "RL step",
        "failed calls / calls",
        &[Series::new("all correct rollouts", smooth(&err, 5)), Series::new("kept for training", smooth(&kept_err, 5))],
        &boundaries,
    )?;
    line_chart(&dir.join("response_length.png"), "Response length (tokens, tool output included)", "RL step", "tokens", &[Series::new("mean", pts(&|s| s.response_length))], &boundaries)?;
    Ok(())
}

/// Writes summary.json, report.md and the plots; returns the one-line summary.
pub fn write(dir: &Path, config: &TrainConfig, evals: &BTreeMap<String, EvalResult>, stages: &[StageSummary], wall_seconds: f64) -> anyhow::Result<String> {
    let steps = read_steps(&dir.join("metrics.jsonl"));
    let last_stage = format!("after_rl_stage{}", stages.len());
    let after_rl = evals.get(&last_stage).or_else(|| evals.get("after_sft"));
    let mut eval_points = Vec::new();
    if let Some(e) = evals.get("after_sft") {
        eval_points.push((0.0, e.pass_at_1));
    }
    let mut step_end = 0usize;
    for s in stages {
        step_end += s.steps;
        eval_points.push((step_end as f64, s.eval.pass_at_1));
    }
    plots(dir, &steps, &eval_points)?;
    let stage_evals: Vec<(String, &EvalResult)> = eval_labels(evals, stages).into_iter().map(|(key, label)| (label, &evals[&key])).collect();
    let pass_series: Vec<Series> =
        stage_evals.iter().filter(|(_, e)| !e.pass_at_k.is_empty()).map(|(label, e)| Series::new(label.clone(), e.pass_at_k.iter().map(|(k, v)| (*k as f64, v.0)).collect())).collect();
    line_chart(&dir.join("pass_at_k.png"), "Held-out pass@k by stage", "k (samples)", "pass@k", &pass_series, &[])?;
    let summary = serde_json::json!({
        "name": config.name,
        "algo": config.algo,
        "eval": {"before_sft": evals.get("before_sft"), "after_sft": evals.get("after_sft"), "after_rl": after_rl},
        "evals": evals,
        "stages": stages,
        "wall_seconds": wall_seconds,
    });
    rstar2_model::write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    let row = |label: &str, e: Option<&EvalResult>| match e {
        Some(e) => format!(
            "| {label} | {:.3} ± {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            e.pass_at_1, e.stderr, e.tool_use_rate, e.tool_calls_per_episode, e.tool_error_ratio, e.positive_tool_error_ratio, e.response_tokens
        ),
        None => format!("| {label} | - | - | - | - | - | - |\n"),
    };
    let mut md = format!(
        "# Run {}\n\nAlgorithm {:?}, seed {}, model `{}`, {:.1} minutes in all.\n\n## Held-out evaluation\n\npass@1 averaged over k = {} samples per problem on {} held-out problems (± is the standard error over problems).\n\n| when | pass@1 | tool use | calls / episode | tool-error ratio | … in correct episodes | response tokens |\n|---|---|---|---|---|---|---|\n",
        config.name,
        config.algo,
        config.seed,
        config.model.display(),
        wall_seconds / 60.0,
        config.eval.samples,
        evals.get("before_sft").map_or(0, |e| e.problems)
    );
    md += &row("before SFT", evals.get("before_sft"));
    md += &row("after SFT", evals.get("after_sft"));
    for s in stages {
        md += &row(&format!("after RL stage {}", s.stage), Some(&s.eval));
    }
    if let Some((_, first)) = stage_evals.iter().find(|(_, e)| !e.pass_at_k.is_empty()) {
        let ks: Vec<usize> = first.pass_at_k.keys().copied().collect();
        md += &format!(
            "\npass@k from the same {} samples per problem (the unbiased estimator of Chen et al. 2021; ± over problems):\n\n| when |{}\n|---|{}\n",
            first.k,
            ks.iter().map(|k| format!(" pass@{k} |")).collect::<String>(),
            "---|".repeat(ks.len())
        );
        for (label, e) in &stage_evals {
            md += &format!("| {label} |{}\n", ks.iter().map(|k| e.pass_at_k.get(k).map_or(" - |".into(), |(m, se)| format!(" {m:.3} ± {se:.3} |"))).collect::<String>());
        }
    }
    if let (Some(sft), Some(rl)) = (evals.get("after_sft"), after_rl)
        && let Some((d, se)) = paired_difference(sft, rl)
    {
        md += &format!("\nRL minus SFT on the same problems (paired): {d:+.3} ± {se:.3} pass@1.\n");
    }
    let others: Vec<_> = evals.iter().filter(|(k, _)| k.starts_with("final_")).collect();
    if !others.is_empty() {
        md += "\n## The final model on other data sets\n\n| data | problems | pass@1 | tool use | calls / episode | tool-error ratio | … in correct episodes | response tokens |\n|---|---|---|---|---|---|---|---|\n";
        for (label, e) in others {
            md += &row(&format!("{} | {}", label.trim_start_matches("final_"), e.problems), Some(e));
        }
    }
    md += "\n## RL stages\n\n| stage | steps | max tokens | max turns | reward (first quarter → last quarter) | tool-error ratio in correct rollouts (first → last) | mean length | minutes |\n|---|---|---|---|---|---|---|---|\n";
    for s in stages {
        md += &format!(
            "| {} | {} | {} | {} | {:.3} → {:.3} | {:.3} → {:.3} | {:.0} | {:.1} |\n",
            s.stage,
            s.steps,
            s.max_response_tokens,
            s.max_turns,
            s.reward_first_steps,
            s.reward_last_steps,
            s.positive_tool_error_ratio_first_steps,
            s.positive_tool_error_ratio_last_steps,
            s.mean_response_length,
            s.seconds / 60.0
        );
    }
    if let Some(after) = after_rl {
        let top = after.pass_at_k.keys().last().copied().unwrap_or(1);
        md += &format!("\n## Per problem type\n\n| type | pass@1 after SFT | pass@1 after RL | pass@{top} after SFT | pass@{top} after RL |\n|---|---|---|---|---|\n");
        let sft = evals.get("after_sft");
        for (kind, v) in &after.per_kind {
            let before = sft.and_then(|e| e.per_kind.get(kind)).copied().unwrap_or(f64::NAN);
            let top_of = |e: Option<&EvalResult>| e.and_then(|e| e.per_kind_pass_at_k.get(kind)?.get(&top).copied()).unwrap_or(f64::NAN);
            md += &format!("| {kind} | {before:.3} | {v:.3} | {:.3} | {:.3} |\n", top_of(sft), top_of(Some(after)));
        }
    }
    md += &format!("\n## What the SFT data holds\n\n{}\n", describe_sft(config));
    md += "\n## Plots\n\n![reward](reward.png)\n![tool errors](tool_errors.png)\n![length](response_length.png)\n![pass@k](pass_at_k.png)\n\nPer-step figures: `metrics.jsonl`; every number above: `summary.json`; the final model: `model/`.\n";
    rstar2_model::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    let f = |k: &str| evals.get(k).map_or(f64::NAN, |e| e.pass_at_1);
    let paired = match (evals.get("after_sft"), after_rl) {
        (Some(a), Some(b)) => paired_difference(a, b).map_or(String::new(), |(d, se)| format!(" (paired RL - SFT {d:+.3} ± {se:.3})")),
        _ => String::new(),
    };
    Ok(format!(
        "done in {:.1} min: held-out pass@1 {:.3} before SFT -> {:.3} after SFT -> {:.3} after RL{paired}; tool-error ratio in correct episodes {:.3} -> {:.3}; report {}",
        wall_seconds / 60.0,
        f("before_sft"),
        f("after_sft"),
        after_rl.map_or(f64::NAN, |e| e.pass_at_1),
        evals.get("after_sft").map_or(f64::NAN, |e| e.positive_tool_error_ratio),
        after_rl.map_or(f64::NAN, |e| e.positive_tool_error_ratio),
        dir.join("report.md").display()
    ))
}

/// The run's evaluations of its own held-out set, in order: (key in `evals`, label for tables),
/// for the keys `evals` holds.
pub fn eval_labels(evals: &BTreeMap<String, EvalResult>, stages: &[StageSummary]) -> Vec<(String, String)> {
    let mut labels = vec![("before_sft".to_string(), "before SFT".to_string()), ("after_sft".to_string(), "after SFT".to_string())];
    labels.extend(stages.iter().map(|s| (format!("after_rl_stage{}", s.stage), format!("after RL stage {}", s.stage))));
    labels.retain(|(key, _)| evals.contains_key(key));
    labels
}

/// What the SFT traces of `config` are made of, and why, in a sentence or three.
pub fn describe_sft(config: &TrainConfig) -> String {
    let mix = &config.sft.mix;
    let mut text = format!(
        "{} traces x {} epochs from synthetic problems of levels {:?}, in the exact rollout format with real sandbox output. {:.0}% answer without the tool; {:.0}% make a failing first call (a syntax or name error) and correct it.",
        config.sft.examples,
        config.sft.epochs,
        config.sft.levels,
        mix.direct * 100.0,
        mix.retry * 100.0
    );
    if mix.wrong > 0.0 {
        text += &format!(
            " On purpose, {:.0}% of the tool-using traces of the kinds {} run a plausible but wrong program (an off-by-one range, `^` for a power, permutations for combinations, the product for the lcm, an added term for a subtracted one) and box what it prints, so the answer is wrong. The paper's SFT teaches the format, not the solutions: after SFT the policy writes right and wrong programs for the same problem (pass@k well above pass@1), and RL has to learn from the reward alone which programs earn it. `product` and `gcd` have no wrong program.",
            mix.wrong * 100.0,
            rstar2_tasks::synth::FLAWED_KINDS.join(", ")
        );
    }
    text
}
