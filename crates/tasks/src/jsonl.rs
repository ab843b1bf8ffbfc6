//! Real data sets as JSONL: one problem per line. The question is the first of `prompt`,
//! `problem`, `question` (a string, or a chat list whose last user message is taken, as in
//! DAPO-Math-17k); the answer the first of `answer`, `solution`, `reward_model.ground_truth`;
//! the kind the first of `data_source`, `subject`, `type`; the level `level` when a number.

use std::path::Path;

use serde_json::Value;

use crate::{Task, TaskError};

/// A line that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Problems of a JSONL file, and the lines skipped (no question, no answer). A file that cannot
/// be read, is not UTF-8, or has a line that is not a JSON object is an error naming the line.
pub fn load_jsonl(path: &Path) -> Result<(Vec<Task>, Vec<Skipped>), TaskError> {
    let mut tasks = Vec::new();
    let mut skipped = Vec::new();
    for row in read_rows(path)? {
        let Some(question) = row.question else {
            skipped.push(Skipped { line: row.line, reason: "no question (fields prompt, problem, question)".into() });
            continue;
        };
        let Some(answer) = row.answer else {
            skipped.push(Skipped { line: row.line, reason: "no answer (fields answer, solution, reward_model.ground_truth)".into() });
            continue;
        };
        tasks.push(Task { id: row.id, kind: row.kind, level: row.level, question, answer, code: None, flawed: None });
    }
    Ok((tasks, skipped))
}

/// Rollout requests of a JSONL file: rows need a question; the answer is optional (episodes of
/// rows with one carry a reward). Returns the requests and the lines without a question.
pub fn load_requests(path: &Path) -> Result<(Vec<rstar2_rollout::Request>, Vec<Skipped>), TaskError> {
    let mut requests = Vec::new();
    let mut skipped = Vec::new();
    for row in read_rows(path)? {
        match row.question {
            Some(question) => requests.push(rstar2_rollout::Request { id: row.id, question, answer: row.answer }),
            None => skipped.push(Skipped { line: row.line, reason: "no question (fields prompt, problem, question)".into() }),
        }
    }
    Ok((requests, skipped))
}

struct Row {
    line: usize,
    id: String,
    kind: String,
    level: u8,
    question: Option<String>,
    answer: Option<String>,
}

fn read_rows(path: &Path) -> Result<Vec<Row>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|e| TaskError::Io { path: path.display().to_string(), cause: e })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(line).map_err(|e| TaskError::Malformed { path: path.display().to_string(), line: number, message: e.to_string() })?;
        if !row.is_object() {
            return Err(TaskError::Malformed { path: path.display().to_string(), line: number, message: "not a JSON object".into() });
        }
        let id = row.get("id").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_else(|| format!("line-{number}"));
        let kind = ["data_source", "subject", "type"].iter().find_map(|f| row.get(*f).and_then(Value::as_str)).unwrap_or("data").to_string();
        let level = row.get("level").and_then(Value::as_u64).and_then(|l| u8::try_from(l).ok()).unwrap_or(0);
        rows.push(Row { line: number, id, kind, level, question: question_of(&row), answer: answer_of(&row) });
    }
    Ok(rows)
}

fn question_of(row: &Value) -> Option<String> {
    for field in ["prompt", "problem", "question"] {
        match row.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => return Some(s.clone()),
            Some(Value::Array(messages)) => {
                let last_user = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
                return last_user.get("content").and_then(Value::as_str).map(str::to_string);
            }
            _ => {}
        }
    }
    None
}

fn answer_of(row: &Value) -> Option<String> {
    let candidates = [row.get("answer"), row.get("solution"), row.get("reward_model").and_then(|r| r.get("ground_truth"))];
    candidates.into_iter().flatten().find_map(|v| match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_layouts_and_reports_bad_rows() {
        let dir = std::env::temp_dir().join(format!("rstar2-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt": "What is 1+1?", "solution": "2"}"#,
                "\n",
                r#"{"problem": "P2", "answer": 34, "id": "x"}"#,
                "\n",
                "\n",
                r#"{"question": "no answer here"}"#,
                "\n",
                r#"{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "DAPO q"}], "reward_model": {"ground_truth": "17", "style": "rule"}, "data_source": "math_dapo"}"#,
                "\n",
                r#"{"answer": "5"}"#,
                "\n",
            ),
        )
        .unwrap();
        let (tasks, skipped) = load_jsonl(&path).unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!((tasks[0].question.as_str(), tasks[0].answer.as_str(), tasks[0].id.as_str()), ("What is 1+1?", "2", "line-1"));
        assert_eq!((tasks[1].answer.as_str(), tasks[1].id.as_str()), ("34", "x"));
        assert_eq!((tasks[2].question.as_str(), tasks[2].answer.as_str(), tasks[2].kind.as_str()), ("DAPO q", "17", "math_dapo"));
        assert_eq!(skipped.iter().map(|s| s.line).collect::<Vec<_>>(), vec![4, 6]);
        std::fs::write(&path, "{\"prompt\": \"a\", \"answer\": \"1\"}\n{not json\n").unwrap();
        let err = load_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
