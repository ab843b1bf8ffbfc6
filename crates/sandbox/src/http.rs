//! The code-judge HTTP API (the service the original rStar2 training code calls), over a
//! [`Sandbox`]: `POST /run`, `/run/batch`, `/run/long-batch`, `GET /ping`, `/status`.
//!
//! A submission is `{"type": "python", "solution": CODE, "input": STDIN?, "sub_id"?,
//! "expected_output"?}`; a result is `{"sub_id", "success", "run_success", "cost", "stdout",
//! "stderr", "reason"}` with `reason` one of `""`, `worker_timeout`, `internal_error`,
//! `invalid_input`. Batches are `{"type": "batch", "submissions": [...]}` and answer
//! `{"sub_id", "results": [...]}` in submission order.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Sandbox, Status, ToolCall};

/// A code-judge submission.
#[derive(Deserialize)]
struct Submission {
    sub_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    solution: String,
    input: Option<String>,
    expected_output: Option<String>,
}

/// A code-judge batch submission.
#[derive(Deserialize)]
struct BatchSubmission {
    sub_id: Option<String>,
    submissions: Vec<Value>,
}

/// A code-judge result.
#[derive(Serialize)]
struct SubmissionResult {
    sub_id: String,
    success: bool,
    run_success: bool,
    cost: f64,
    stdout: String,
    stderr: String,
    reason: &'static str,
}

/// A random 128-bit id in hex, for submissions that come without one (as code-judge does).
fn new_sub_id() -> String {
    use std::hash::BuildHasher;
    let random = || std::collections::hash_map::RandomState::new().hash_one(0u8);
    format!("{:016x}{:016x}", random(), random())
}

async fn judge(sandbox: &Sandbox, submission: Value) -> SubmissionResult {
    let sub_id_of = |v: &Value| v.get("sub_id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(new_sub_id);
    let invalid = |sub_id: String, why: String| SubmissionResult {
        sub_id, success: false, run_success: false, cost: 0.0, stdout: String::new(), stderr: why, reason: "invalid_input",
    };
    let sub: Submission = match serde_json::from_value(submission.clone()) {
        Ok(s) => s,
        Err(e) => return invalid(sub_id_of(&submission), format!("invalid submission: {e}")),
    };
    let sub_id = sub.sub_id.unwrap_or_else(new_sub_id);
    if sub.kind != "python" {
        return invalid(sub_id, format!("unsupported submission type {:?}: this service runs python", sub.kind));
    }
    let result = sandbox.run(ToolCall { code: sub.solution, stdin: sub.input }).await;
    let run_success = result.status == Status::Ok;
    let success = run_success && sub.expected_output.as_ref().is_none_or(|want| want.trim() == result.stdout.trim());
    let reason = match result.status {
        Status::Timeout => "worker_timeout",
        Status::Crashed => "internal_error",
        Status::InvalidInput => "invalid_input",
        _ => "",
    };
    SubmissionResult {
        sub_id,
        success,
        run_success,
        cost: result.elapsed_us as f64 / 1e6,
        stdout: result.stdout,
        stderr: result.stderr,
        reason,
    }
}

async fn judge_batch(sandbox: Arc<Sandbox>, batch: BatchSubmission) -> Value {
    let sub_id = batch.sub_id.unwrap_or_else(new_sub_id);
    let tasks: Vec<_> = batch
        .submissions
        .into_iter()
        .map(|sub| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move { judge(&sandbox, sub).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("judge tasks do not panic"));
    }
    json!({ "sub_id": sub_id, "results": results })
}

/// The HTTP routes of the code-judge API over `sandbox`.
pub fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/ping", get(|| async { Json("pong") }))
        .route(
            "/status",
            get(|State(sb): State<Arc<Sandbox>>| async move { Json(json!({ "queue": sb.queued(), "num_workers": sb.workers() })) }),
        )
        .route(
            "/run",
            post(|State(sb): State<Arc<Sandbox>>, Json(sub): Json<Value>| async move { Json(judge(&sb, sub).await) }),
        )
        .route("/run/batch", post(batch_handler))
        .route("/run/long-batch", post(batch_handler))
        .with_state(Arc::new(sandbox))
}

async fn batch_handler(State(sb): State<Arc<Sandbox>>, Json(batch): Json<BatchSubmission>) -> Json<Value> {
    Json(judge_batch(sb, batch).await)
}

