//! A replication study: every (algorithm, seed) run of one config, resumable, then one report
//! across seeds: per-step curves with mean ± standard-error bands, held-out pass@1 and pass@k
//! per stage with error bars, and the paper's claims each marked holds / does not hold /
//! within noise.
//!
//! Layout of `runs/<study>/`: `sft-seed<S>/` (the seed's SFT, stopped at its first RL step and
//! shared by every algorithm of that seed, so they start from the same policy, as the paper's
//! comparison does), `<algo>-seed<S>/` (a copy of it trained on to the end), `study.json` (the
//! settings, checked on restart), `report.md` and the PNGs. A killed study started again skips
//! finished runs, resumes a run from its last checkpoint, and writes the same report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::{Algo, TrainConfig};
use crate::eval::{EvalResult, mean_and_stderr, paired_difference};
use crate::plot::{Series, line_chart, smooth};
use crate::report::{StageSummary, StepMetrics, read_steps};
use crate::{TrainOptions, Trainer};

/// What a study is made of.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Training config (TOML) laid over the embedded default.
    pub config: Option<PathBuf>,
    /// Seeds 1..=seeds.
    pub seeds: u64,
    pub algos: Vec<Algo>,
    /// Device spec for every run (as `train --device`).
    pub device: Option<String>,
    /// Where the study folder is created.
    pub runs_dir: PathBuf,
    /// The study folder's name (default: the config's name + "-study").
    pub name: Option<String>,
    /// For testing: stop (as if killed) once this many runs have finished in this invocation.
    pub stop_after_runs: Option<usize>,
}

/// The settings saved in study.json: a restart with other settings is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    config: String,
    seeds: u64,
    algos: Vec<Algo>,
    device: Option<String>,
}

/// A finished run folder has its summary.
fn finished(run: &Path) -> bool {
    run.join("summary.json").exists()
}

/// A run folder whose last checkpoint can be resumed.
fn resumable(run: &Path) -> bool {
    run.join("config.toml").exists() && (run.join("checkpoint/state.json").exists() || run.join("checkpoint.old/state.json").exists())
}

/// An SFT folder is ready once its checkpoint is past SFT (the RL phase).
fn sft_ready(run: &Path) -> bool {
    let state = std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&state).is_ok_and(|v| v["phase"] == "rl")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

/// Runs what is missing of the study and writes its report; returns the study folder.
pub fn replicate(options: &StudyOptions) -> anyhow::Result<PathBuf> {
    if options.seeds == 0 || options.algos.is_empty() {
        bail!("a study needs at least one seed and one algorithm");
    }
    let base = TrainConfig::load(options.config.as_deref())?;
    let name = options.name.clone().unwrap_or_else(|| format!("{}-study", base.name));
    let dir = options.runs_dir.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let settings = Settings { config: toml::to_string(&base)?, seeds: options.seeds, algos: options.algos.clone(), device: options.device.clone() };
    let saved = dir.join("study.json");
    match std::fs::read_to_string(&saved) {
        Ok(text) => {
            let old: Settings = serde_json::from_str(&text).with_context(|| format!("{} is not a study's settings", saved.display()))?;
            if old != settings {
                bail!("{} holds a study with other settings (config, --seeds, --algos or --device); give another --name or remove it", dir.display());
            }
        }
        Err(_) => rstar2_model::write_atomic(&saved, serde_json::to_string_pretty(&settings)?.as_bytes())?,
    }
    println!("study {}: {} seeds x {:?} ({} runs)", dir.display(), options.seeds, options.algos.iter().map(|a| a.name()).collect::<Vec<_>>(), options.seeds as usize * options.algos.len());
    let mut done_here = 0usize;
    for seed in 1..=options.seeds {
        let runs: Vec<(Algo, PathBuf)> = options.algos.iter().map(|&a| (a, dir.join(format!("{}-seed{seed}", a.name())))).collect();
        if runs.iter().all(|(_, r)| finished(r)) {
            println!("seed {seed}: every run finished, skipped");
            continue;
        }
        let sft = dir.join(format!("sft-seed{seed}"));
        // Runs already copied from the SFT folder no longer need it.
        let need_sft = runs.iter().any(|(_, r)| !finished(r) && !resumable(r));
        if need_sft && !sft_ready(&sft) {
            if sft.exists() {
                // Killed during SFT (its first checkpoint comes after it): start it again.
                std::fs::remove_dir_all(&sft).with_context(|| format!("removing the unfinished {}", sft.display()))?;
            }
            println!("seed {seed}: SFT (shared by every algorithm of this seed)");
            let mut trainer = Trainer::start(&TrainOptions {
                config: options.config.clone(),
                device: options.device.clone(),
                algo: Some(options.algos[0]),
                name: Some(format!("sft-seed{seed}")),
                seed: Some(seed),
                runs_dir: dir.clone(),
                ..TrainOptions::default()
            })?;
            trainer.run(Some(0))?;
            if !sft_ready(&sft) {
                bail!("{}: SFT ended without its checkpoint", sft.display());
            }
        }
        for (algo, run) in &runs {
            if finished(run) {
                println!("{}: finished, skipped", run.display());
                continue;
            }
            if !resumable(run) {
                let _ = std::fs::remove_dir_all(run);
                let tmp = run.with_extension("tmp");
                let _ = std::fs::remove_dir_all(&tmp);
                copy_dir(&sft, &tmp)?;
                let config_path = tmp.join("config.toml");
                let mut config: TrainConfig = toml::from_str(&std::fs::read_to_string(&config_path)?).with_context(|| format!("{}", config_path.display()))?;
                config.algo = *algo;
                config.name = run.file_name().expect("a run folder name").to_string_lossy().into_owned();
                std::fs::write(&config_path, toml::to_string(&config)?)?;
                std::fs::rename(&tmp, run).with_context(|| format!("renaming {} to {}", tmp.display(), run.display()))?;
            }
            println!("{}: training", run.display());
            let mut trainer = Trainer::resume(run)?;
            trainer.run(None)?;
            done_here += 1;
            if options.stop_after_runs.is_some_and(|n| done_here >= n) {
                println!("stopped after {done_here} runs (--stop-after-runs)");
                return Ok(dir);
            }
        }
    }
    let summary = write_report(&dir, &base, options.seeds, &options.algos)?;
    println!("{summary}");
    Ok(dir)
}

/// One per-step figure of a run, for curves and late means.
type Metric = dyn Fn(&StepMetrics) -> f64;

/// A finished run's figures.
struct RunResult {
    steps: Vec<StepMetrics>,
    evals: BTreeMap<String, EvalResult>,
    stages: Vec<StageSummary>,
}

fn read_run(run: &Path) -> anyhow::Result<RunResult> {
    let text = std::fs::read_to_string(run.join("summary.json")).with_context(|| format!("{} has no summary.json (not finished)", run.display()))?;
    let summary: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}/summary.json", run.display()))?;
    Ok(RunResult {
        steps: read_steps(&run.join("metrics.jsonl")),
        evals: serde_json::from_value(summary["evals"].clone()).with_context(|| format!("{}/summary.json: evals", run.display()))?,
        stages: serde_json::from_value(summary["stages"].clone()).with_context(|| format!("{}/summary.json: stages", run.display()))?,
    })
}

/// Mean ± standard error across seeds of `f` over each run's per-step series (5-step means),
/// at every step all runs reached.
fn band(runs: &[RunResult], f: &Metric) -> Vec<(f64, f64, f64)> {
    let smoothed: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| smooth(&r.steps.iter().map(|s| (s.rl_step as f64, f(s))).collect::<Vec<_>>(), 5)).collect();
    let steps = smoothed.iter().map(Vec::len).min().unwrap_or(0);
    (0..steps)
        .map(|i| {
            let values: Vec<f64> = smoothed.iter().map(|s| s[i].1).collect();
            let (m, se) = mean_and_stderr(&values);
            (smoothed[0][i].0, m, se)
        })
        .collect()
}

/// Mean of `f` over the last fifth of a run's RL steps.
fn late_mean(run: &RunResult, f: &Metric) -> f64 {
    let n = run.steps.len();
    let tail = &run.steps[n - (n / 5).max(1).min(n)..];
    tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
}

/// holds / does not hold / within noise, for an effect `d` claimed positive, with standard error
/// `se`: beyond two standard errors either way, or not.
fn verdict(d: f64, se: f64) -> &'static str {
    if d > 2.0 * se {
        "holds"
    } else if d < -2.0 * se {
        "does not hold"
    } else {
        "within noise"
    }
}

fn fmt_mean(values: &[f64]) -> String {
    let (m, se) = mean_and_stderr(values);
    format!("{m:.3} ± {se:.3}")
}

/// Mean over the values that are there (a kind can be missing from a small held-out set).
fn mean_present(values: impl Iterator<Item = Option<f64>>) -> f64 {
    let present: Vec<f64> = values.flatten().collect();
    if present.is_empty() { f64::NAN } else { present.iter().sum::<f64>() / present.len() as f64 }
}

/// Writes report.md and the PNGs of a finished study; returns a one-line summary.
pub fn write_report(dir: &Path, config: &TrainConfig, seeds: u64, algos: &[Algo]) -> anyhow::Result<String> {
    let mut results: Vec<(Algo, Vec<RunResult>)> = Vec::new();
    for &algo in algos {
        let runs = (1..=seeds).map(|s| read_run(&dir.join(format!("{}-seed{s}", algo.name())))).collect::<anyhow::Result<Vec<_>>>()?;
        results.push((algo, runs));
    }
    let boundaries: Vec<f64> = results[0].1[0].steps.windows(2).filter(|w| w[0].stage != w[1].stage).map(|w| w[1].rl_step as f64).collect();
    let curves: [(&str, &str, &str, &Metric); 4] = [
        ("study_reward.png", "Training reward (5-step mean, ± s.e. across seeds)", "reward", &|s| s.reward_mean),
        ("study_tool_errors.png", "Tool-error ratio in correct rollouts (Fig. 4; ± s.e. across seeds)", "failed calls / calls", &|s| s.positive_tool_error_ratio),
        ("study_response_length.png", "Response length (tokens, tool output included; ± s.e.)", "tokens", &|s| s.response_length),
        ("study_tool_calls.png", "Tool calls per episode (± s.e. across seeds)", "calls", &|s| s.tool_calls_per_episode),
    ];
    for (file, title, y, f) in curves {
        let series: Vec<Series> = results.iter().map(|(a, runs)| Series::with_band(a.name(), &band(runs, f))).collect();
        line_chart(&dir.join(file), title, "RL step", y, &series, &boundaries)?;
    }
    // Held-out evaluations by stage label, per algorithm: one EvalResult per seed.
    let labels = crate::report::eval_labels(&results[0].1[0].evals, &results[0].1[0].stages);
    let ks: Vec<usize> = results[0].1[0].evals.get("after_sft").map(|e| e.pass_at_k.keys().copied().collect()).unwrap_or_default();
    let pass_points = |runs: &[RunResult], key: &str| -> Vec<(f64, f64, f64)> {
        ks.iter()
            .map(|k| {
                let (m, se) = mean_and_stderr(&runs.iter().map(|r| r.evals[key].pass_at_k[k].0).collect::<Vec<_>>());
                (*k as f64, m, se)
            })
            .collect()
    };
    // After SFT once (every algorithm of a seed shares it), then each algorithm after RL.
    let mut pass_series = vec![Series::with_band("after SFT", &pass_points(&results[0].1, "after_sft"))];
    if let Some((last_key, last_label)) = labels.last().filter(|(k, _)| k != "after_sft") {
        for (algo, runs) in &results {
            pass_series.push(Series::with_band(format!("{} {last_label}", algo.name()), &pass_points(runs, last_key)));
        }
    }
    line_chart(&dir.join("study_pass_at_k.png"), "Held-out pass@k (± s.e. across seeds)", "k (samples)", "pass@k", &pass_series, &[])?;

    let first = &results[0].1[0];
    let eval_n = first.evals.get("after_sft").map_or(0, |e| e.k);
    let problems = first.evals.get("after_sft").map_or(0, |e| e.problems);
    let mut md = format!(
        "# Replication study: {}\n\n{} seeds x {} ({} runs) of `{}` ({}), model `{}`, device `{}`; CPU of the machine that wrote this report: {}.\n\nEvery algorithm of a seed starts from the same SFT model (`sft-seed<S>/`). Held-out: {} problems, {} samples each at temperature {}; ± is the standard error across seeds (the spread of the seed means), unless marked paired.\n",
        config.name,
        seeds,
        algos.iter().map(|a| a.name()).collect::<Vec<_>>().join(" and "),
        seeds as usize * algos.len(),
        config.name,
        format_args!("{} RL stages, {} prompts x {} rollouts per step", config.rl.stages.len(), config.rl.prompts_per_step, config.rl.group_size),
        config.model.display(),
        config.device,
        format_args!("{}, {} threads", rstar2_model::cpu::cpu_name(), std::thread::available_parallelism().map_or(1, |n| n.get())),
        problems,
        eval_n,
        config.eval.temperature,
    );
    md += &format!("\n## The paper's claims at this scale\n\n{}\n", claims_table(&results));
    md += "\n## Held-out pass@1 by stage\n\n| when |";
    md += &results.iter().map(|(a, _)| format!(" {} |", a.name())).collect::<String>();
    md += &format!("\n|---|{}\n", "---|".repeat(results.len()));
    for (key, label) in &labels {
        md += &format!("| {label} |{}\n", results.iter().map(|(_, runs)| format!(" {} |", fmt_mean(&runs.iter().map(|r| r.evals[key].pass_at_1).collect::<Vec<_>>()))).collect::<String>());
    }
    if !ks.is_empty() {
        md += &format!("\n## Held-out pass@k by stage\n\nThe unbiased estimator (Chen et al. 2021) from the {eval_n} samples per problem.\n\n| algorithm | when |");
        md += &ks.iter().map(|k| format!(" pass@{k} |")).collect::<String>();
        md += &format!("\n|---|---|{}\n", "---|".repeat(ks.len()));
        for (algo, runs) in &results {
            for (key, label) in &labels {
                md += &format!(
                    "| {} | {label} |{}\n",
                    algo.name(),
                    ks.iter().map(|k| format!(" {} |", fmt_mean(&runs.iter().map(|r| r.evals[key].pass_at_k.get(k).map_or(f64::NAN, |v| v.0)).collect::<Vec<_>>()))).collect::<String>()
                );
            }
        }
    }
    md += "\n## Per problem kind (pass@1, mean across seeds)\n\n| kind | after SFT |";
    md += &results.iter().map(|(a, _)| format!(" {} after RL |", a.name())).collect::<String>();
    md += &format!("\n|---|---|{}\n", "---|".repeat(results.len()));
    let last_key = labels.last().map_or("after_sft".to_string(), |l| l.0.clone());
    let kinds: std::collections::BTreeSet<String> =
        results.iter().flat_map(|(_, runs)| runs.iter().flat_map(|r| r.evals.get("after_sft").into_iter().flat_map(|e| e.per_kind.keys().cloned()))).collect();
    for kind in kinds {
        let of = |runs: &[RunResult], key: &str| mean_present(runs.iter().map(|r| r.evals.get(key).and_then(|e| e.per_kind.get(&kind).copied())));
        md += &format!("| {kind} | {:.3} |{}\n", of(&results[0].1, "after_sft"), results.iter().map(|(_, runs)| format!(" {:.3} |", of(runs, &last_key))).collect::<String>());
    }
    md += "\n## Per seed\n\n| run | pass@1 after SFT | after RL | paired RL - SFT | tool-error ratio in correct rollouts, last fifth of steps | response tokens, last fifth |\n|---|---|---|---|---|---|\n";
    for (algo, runs) in &results {
        for (i, r) in runs.iter().enumerate() {
            let (sft, rl) = (&r.evals["after_sft"], &r.evals[&last_key]);
            let (d, se) = paired_difference(sft, rl).unwrap_or((f64::NAN, f64::NAN));
            md += &format!(
                "| {}-seed{} | {:.3} | {:.3} | {d:+.3} ± {se:.3} | {:.3} | {:.0} |\n",
                algo.name(),
                i + 1,
                sft.pass_at_1,
                rl.pass_at_1,
                late_mean(r, &|s| s.positive_tool_error_ratio),
                late_mean(r, &|s| s.response_length)
            );
        }
    }
    md += &format!("\n## What the SFT data holds\n\n{}\n", crate::report::describe_sft(config));
    md += "\n## Plots\n\n![reward](study_reward.png)\n![tool errors in correct rollouts](study_tool_errors.png)\n![response length](study_response_length.png)\n![tool calls](study_tool_calls.png)\n![pass@k](study_pass_at_k.png)\n\nEach run's own report, metrics and final model are in its folder.\n";
    rstar2_model::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(format!("study report: {}", dir.join("report.md").display()))
}

/// The paper's four claims, each with its numbers and a verdict.
fn claims_table(results: &[(Algo, Vec<RunResult>)]) -> String {
    let mut md = "| claim | algorithm | effect (mean ± s.e. across seeds) | verdict |\n|---|---|---|---|\n".to_string();
    let last_stage = |r: &RunResult| r.stages.last().map_or("after_sft".to_string(), |s| format!("after_rl_stage{}", s.stage));
    for (algo, runs) in results {
        let d: Vec<f64> = runs.iter().map(|r| r.evals[&last_stage(r)].pass_at_1 - r.evals["after_sft"].pass_at_1).collect();
        let (m, se) = mean_and_stderr(&d);
        let se = if runs.len() == 1 { paired_difference(&runs[0].evals["after_sft"], &runs[0].evals[&last_stage(&runs[0])]).map_or(0.0, |p| p.1) } else { se };
        md += &format!("| (1) RL raises held-out pass@1 over SFT | {} | after RL - after SFT: {m:+.3} ± {se:.3} | {} |\n", algo.name(), verdict(m, se));
    }
    let roc = results.iter().find(|(a, _)| *a == Algo::GrpoRoc);
    let grpo = results.iter().find(|(a, _)| *a == Algo::Grpo);
    match (roc, grpo) {
        (Some((_, roc)), Some((_, grpo))) => {
            let per_seed = |f: &Metric| -> Vec<f64> { roc.iter().zip(grpo).map(|(r, g)| late_mean(g, f) - late_mean(r, f)).collect() };
            let err = per_seed(&|s| s.positive_tool_error_ratio);
            let (m, se) = mean_and_stderr(&err);
            let (r_err, g_err) = (
                fmt_mean(&roc.iter().map(|r| late_mean(r, &|s| s.positive_tool_error_ratio)).collect::<Vec<_>>()),
                fmt_mean(&grpo.iter().map(|r| late_mean(r, &|s| s.positive_tool_error_ratio)).collect::<Vec<_>>()),
            );
            md += &format!(
                "| (2) RoC's tool-error ratio among correct rollouts ends below GRPO's (last fifth of RL steps) | both | GRPO {g_err}, RoC {r_err}; GRPO - RoC per seed: {m:+.3} ± {se:.3} | {} |\n",
                verdict(m, se)
            );
            let len = per_seed(&|s| s.response_length);
            let (m, se) = mean_and_stderr(&len);
            let tokens = |runs: &[RunResult]| {
                let (m, se) = mean_and_stderr(&runs.iter().map(|r| late_mean(r, &|s| s.response_length)).collect::<Vec<_>>());
                format!("{m:.1} ± {se:.1}")
            };
            let (r_len, g_len) = (tokens(roc), tokens(grpo));
            md += &format!(
                "| (3) RoC's responses are no longer than GRPO's (tokens, last fifth of RL steps) | both | GRPO {g_len}, RoC {r_len}; GRPO - RoC per seed: {m:+.1} ± {se:.1} | {} |\n",
                verdict(m, se).replace("does not hold", "does not hold (RoC longer)").replace("within noise", "within noise (no longer beyond noise)")
            );
        }
        _ => md += "| (2), (3) RoC against GRPO | - | needs both algorithms (`--algos grpo,grpo-roc`) | not measured |\n",
    }
    for (algo, runs) in results {
        if runs[0].stages.len() < 2 {
            md += "| (4) the stage-2 filter and longer budget help | - | needs two RL stages | not measured |\n";
            break;
        }
        let d: Vec<f64> = runs.iter().map(|r| r.evals["after_rl_stage2"].pass_at_1 - r.evals["after_rl_stage1"].pass_at_1).collect();
        let (m, se) = mean_and_stderr(&d);
        md += &format!("| (4) the stage-2 filter and longer budget help | {} | after stage 2 - after stage 1: {m:+.3} ± {se:.3} | {} |\n", algo.name(), verdict(m, se));
    }
    md += "\nA verdict holds or does not hold when the effect is beyond two standard errors across seeds (one seed: the paired standard error over problems); otherwise it is within noise.\n";
    md
}
