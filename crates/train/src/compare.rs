//! Comparing runs: the paper's Figure 4 for several runs: tool-error ratio in
//! correct rollouts over RL steps (10-step means), and the held-out figures side by side.

use std::path::{Path, PathBuf};

use crate::plot::{Series, line_chart, smooth};
use crate::report::read_steps;

/// Prints each run's figures and writes the chart of their tool-error ratios to `out` (PNG).
pub fn compare(runs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    println!("{:<16} {:>10} {:>12} {:>14} {:>16}", "run", "steps", "after RL", "err+ first 20", "err+ last 20");
    for dir in runs {
        let steps = read_steps(&dir.join("metrics.jsonl"));
        anyhow::ensure!(!steps.is_empty(), "{} has no RL steps in metrics.jsonl", dir.display());
        let name = dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
        let points: Vec<(f64, f64)> = steps.iter().map(|s| (s.rl_step as f64, s.positive_tool_error_ratio)).collect();
        let mean = |xs: &[(f64, f64)]| xs.iter().map(|p| p.1).sum::<f64>() / xs.len().max(1) as f64;
        let summary: serde_json::Value = std::fs::read_to_string(dir.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        println!(
            "{:<16} {:>10} {:>12} {:>14.3} {:>16.3}",
            name,
            steps.len(),
            summary["eval"]["after_rl"]["pass_at_1"].as_f64().map_or("-".into(), |p| format!("{p:.3}")),
            mean(&points[..points.len().min(20)]),
            mean(&points[points.len().saturating_sub(20)..])
        );
        series.push(Series::new(name, smooth(&points, 10)));
    }
    line_chart(out, "Tool-error ratio in correct rollouts (10-step mean)", "RL step", "failed calls / calls", &series, &[])?;
    println!("wrote {}", out.display());
    Ok(())
}
