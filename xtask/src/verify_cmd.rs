//! `cargo xtask verify --input IN.jsonl`: score responses against ground truths.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use rstar2_grpo::reward::{AnswerScope, verify};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// JSONL with lines {"id": ..., "response": ..., "answer": ...}.
    #[arg(long)]
    pub input: PathBuf,
    /// Take the last \boxed{} anywhere in the response, not only inside <answer>...</answer>.
    #[arg(long)]
    pub anywhere: bool,
}

/// Prints one line per input line: {"id", "reward": 0 or 1, "extracted"}. A line that is not a
/// JSON object with string "response" and "answer" (a number answer is accepted too) scores 0
/// with an "error" field; the run goes on.
pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let scope = if args.anywhere { AnswerScope::Anywhere } else { AnswerScope::AnswerTag };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading line {} of {}", n + 1, args.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let id = row.get("id").cloned().unwrap_or(Value::Null);
        let response = row.get("response").and_then(Value::as_str);
        let answer = match row.get("answer") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(x)) => Some(x.to_string()),
            _ => None,
        };
        let result = match (response, answer) {
            (Some(response), Some(answer)) => {
                let v = verify(response, &answer, scope, false);
                json!({ "id": id, "reward": v.reward, "extracted": v.extracted })
            }
            _ => json!({ "id": id, "reward": 0, "extracted": null, "error": format!("line {}: expected a JSON object with string \"response\" and \"answer\"", n + 1) }),
        };
        writeln!(out, "{result}")?;
    }
    Ok(())
}
