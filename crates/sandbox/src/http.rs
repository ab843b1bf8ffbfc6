//! The code-judge HTTP API (the service the original rStar2 training code calls), over a
//! [`Sandbox`]: `POST /run`, `/run/batch`, `/run/long-batch`, `/judge`, `/judge/batch`,
//! `/judge/long-batch`, `GET /ping`, `/status`, as code-judge (0xWJ/code-judge) answers them.
//!
//! A submission is `{"type": "python", "solution": CODE, "input": STDIN?, "sub_id"?,
//! "expected_output"?}`; a `/run` result is `{"sub_id", "success", "run_success", "cost",
//! "stdout", "stderr", "reason"}` with `reason` one of `""`, `worker_timeout`, `internal_error`,
//! `invalid_input` (and `queue_timeout` through a queue); `/judge` answers the same without `stdout` and `stderr`. `success` is
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
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sandbox;
use crate::judge::{SubmissionResult, judge, new_id};

/// A code-judge batch submission.
#[derive(Deserialize)]
struct BatchSubmission {
    sub_id: Option<String>,
    submissions: Vec<Value>,
}

/// Judges submissions: on the local pool, or as code-judge's front end does, through the
/// queue a [`Sandbox::queue`] submits to (one try; `long` for the long-batch routes).
async fn judge_all(sandbox: Arc<Sandbox>, submissions: Vec<Value>, long: bool) -> Vec<SubmissionResult> {
    if let Some(client) = sandbox.queue_client() {
        let client = client.clone();
        let n = submissions.len();
        return tokio::task::spawn_blocking(move || client.judge(submissions, long)).await.unwrap_or_else(|_| (0..n).map(|_| SubmissionResult::queue_timeout(new_id(), 0.0)).collect());
    }
    let tasks: Vec<_> = submissions
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
    results
}

async fn judge_batch(sandbox: Arc<Sandbox>, batch: BatchSubmission, verdicts_only: bool, long: bool) -> Value {
    let sub_id = batch.sub_id.unwrap_or_else(new_id);
    let results: Vec<SubmissionResult> = judge_all(sandbox, batch.submissions, long).await.into_iter().map(|r| r.for_http(verdicts_only)).collect();
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
    let result = judge_all(sandbox, vec![submission], false).await.pop().expect("one result per submission");
    Json(result.for_http(verdicts_only)).into_response()
}

async fn batch(sandbox: Arc<Sandbox>, body: Bytes, verdicts_only: bool, long: bool) -> Response {
    let batch: BatchSubmission = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return unprocessable(e),
    };
    if batch.submissions.is_empty() {
        return unprocessable("a batch needs at least one submission".into());
    }
    Json(judge_batch(sandbox, batch, verdicts_only, long).await).into_response()
}

/// The HTTP routes of the code-judge API over `sandbox`. On a local pool long batches are served
/// like batches (nothing here bounds how long a batch may wait for workers); through a queue
/// ([`Sandbox::queue`]) this is code-judge's front end: batches are work items of at most 4 s in
/// the queue, long batches of up to an hour.
pub fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/ping", get(|| async { Json("pong") }))
        .route(
            "/status",
            get(|State(sb): State<Arc<Sandbox>>| async move {
                // Through a queue, both come from one query of Redis.
                let status = tokio::task::spawn_blocking(move || match sb.queue_client() {
                    Some(client) => client.status().unwrap_or((0, 0)),
                    None => (sb.queued(), sb.workers()),
                });
                let status = status.await.unwrap_or((0, 0));
                Json(json!({ "queue": status.0, "num_workers": status.1 }))
            }),
        )
        .route("/run", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| single(sb, body, false)))
        .route("/judge", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| single(sb, body, true)))
        .route("/run/batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, false, false)))
        .route("/run/long-batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, false, true)))
        .route("/judge/batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, true, false)))
        .route("/judge/long-batch", post(|State(sb): State<Arc<Sandbox>>, body: Bytes| batch(sb, body, true, true)))
        .with_state(Arc::new(sandbox))
}
