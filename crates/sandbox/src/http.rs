//! The code-judge HTTP API (the service the original rStar2 training code calls), over a
//! [`Sandbox`]: `POST /run`, `/run/batch`, `/run/long-batch`, `/judge`, `/judge/batch`,
//! `/judge/long-batch`, `GET /ping`, `/status`, as code-judge (0xWJ/code-judge) answers them.
//!
//! A submission is `{"type": "python", "solution": CODE, "input": STDIN?, "sub_id"?,
//! "expected_output"?}`; a `/run` result is `{"sub_id", "success", "run_success", "cost",
//! "stdout", "stderr", "reason"}` with `reason` one of `""`, `worker_timeout`, `internal_error`,
//! `invalid_input`; `/judge` answers the same without `stdout` and `stderr`. `success` is
//! `run_success` and, when `expected_output` is given, stdout equal to it after stripping
//! whitespace at both ends (code-judge's comparison). A timeout's stdout ends with code-judge's
//! `Suicide from timeout.` line. Batches are `{"type": "batch", "submissions": [...]}` (at least
//! one) and answer `{"sub_id", "results": [...]}` in submission order. C++ (`"type": "cpp"`)
//! and anything else but Python is answered `invalid_input`: this service runs Python only. A
//! body that is not such JSON is answered 422 with `{"detail": ...}`, as FastAPI does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

/// A code-judge result (`/run`); `/judge` drops stdout and stderr.
#[derive(Serialize)]
struct SubmissionResult {
    sub_id: String,
    success: bool,
    run_success: bool,
    cost: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    reason: &'static str,
}

impl SubmissionResult {
    /// The `/judge` form: verdict and cost only.
    fn verdict(self) -> Self {
        SubmissionResult { stdout: None, stderr: None, ..self }
    }
}

/// What code-judge's worker prints when a submission runs out of time.
const TIMEOUT_LINE: &str = "Suicide from timeout.\n";

/// A random 128-bit id in hex, for submissions that come without one (as code-judge does).
fn new_sub_id() -> String {
    use std::hash::BuildHasher;
    let random = || std::collections::hash_map::RandomState::new().hash_one(0u8);
    format!("{:016x}{:016x}", random(), random())
}

async fn judge(sandbox: &Sandbox, submission: Value) -> SubmissionResult {
    let sub_id_of = |v: &Value| v.get("sub_id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(new_sub_id);
    let invalid = |sub_id: String, why: String| SubmissionResult {
        sub_id, success: false, run_success: false, cost: 0.0, stdout: Some(String::new()), stderr: Some(why), reason: "invalid_input",
    };
    let sub: Submission = match serde_json::from_value(submission.clone()) {
        Ok(s) => s,
        Err(e) => return invalid(sub_id_of(&submission), format!("invalid submission: {e}")),
    };
    let sub_id = sub.sub_id.unwrap_or_else(new_sub_id);
    if sub.kind != "python" {
        return invalid(sub_id, format!("unsupported submission type {:?}: this service runs python", sub.kind));
    }
    let mut result = sandbox.run(ToolCall { code: sub.solution, stdin: sub.input }).await;
    if result.status == Status::Timeout {
        result.stdout.push_str(TIMEOUT_LINE);
    }
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
        stdout: Some(result.stdout),
        stderr: Some(result.stderr),
        reason,
    }
}

async fn judge_batch(sandbox: Arc<Sandbox>, batch: BatchSubmission, verdicts_only: bool) -> Value {
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
        let result = task.await.expect("judge tasks do not panic");
        results.push(if verdicts_only { result.verdict() } else { result });
    }
    json!({ "sub_id": sub_id, "results": results })
}

/// A request body that is not what a route takes: 422 with a JSON `detail`, as FastAPI answers.
fn unprocessable(detail: String) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "detail": detail }))).into_response()
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

async fn single(sandbox: Arc<Sandbox>, body: Bytes, verdicts_only: bool) -> Response {
    let submission: Value = match parse_body(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return unprocessable("a submission is a JSON object".into()),
        Err(e) => return unprocessable(e),
    };
    let result = judge(&sandbox, submission).await;
    Json(if verdicts_only { result.verdict() } else { result }).into_response()
}

async fn batch(sandbox: Arc<Sandbox>, body: Bytes, verdicts_only: bool) -> Response {
    let batch: BatchSubmission = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return unprocessable(e),
    };
    if batch.submissions.is_empty() {
        return unprocessable("a batch needs at least one submission".into());
    }
    Json(judge_batch(sandbox, batch, verdicts_only).await).into_response()
}

/// The HTTP routes of the code-judge API over `sandbox`. Long batches are served like batches:
/// nothing here bounds how long a batch may wait for workers.
pub fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/ping", get(|| async { Json("pong") }))
        .route(
            "/status",
            get(|State(sb): State<Arc<Sandbox>>| async move { Json(json!({ "queue": sb.queued(), "num_workers": sb.workers() })) }),
        )
        .route("/run", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| single(sb, body, false)))
        .route("/judge", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| single(sb, body, true)))
        .route("/run/batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, false)))
        .route("/run/long-batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, false)))
        .route("/judge/batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, true)))
        .route("/judge/long-batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, true)))
        .with_state(Arc::new(sandbox))
}
