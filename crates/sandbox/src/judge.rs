//! code-judge's submissions and results (0xWJ/code-judge, `app/model.py`), and judging one
//! submission on a local [`Sandbox`]: shared by the HTTP routes ([`crate::http`]) and the Redis
//! queue worker ([`crate::queue`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Sandbox, Status, ToolCall, ToolResult};

/// A code-judge submission: `{"type": "python", "solution", "input"?, "sub_id"?,
/// "expected_output"?}`.
#[derive(Deserialize)]
struct Submission {
    sub_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    solution: String,
    input: Option<String>,
    expected_output: Option<String>,
}

/// A code-judge result. `reason` is `""`, `worker_timeout`, `queue_timeout`, `internal_error`
/// or `invalid_input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionResult {
    /// The submission's id (a random one when it came without).
    pub sub_id: String,
    /// `run_success` and, with an expected output, stdout equal to it (both stripped).
    pub success: bool,
    /// The program ran to the end without error.
    pub run_success: bool,
    /// Seconds it took.
    pub cost: f64,
    /// Its standard output (absent in `/judge` answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Its standard error (absent in `/judge` answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Why it failed, as code-judge names it.
    #[serde(default)]
    pub reason: String,
    /// This sandbox's own status of the call, in results that its queue workers write (code-judge
    /// ignores fields it does not know); never in HTTP answers, whose clients may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// What code-judge's worker prints when a submission runs out of time.
pub(crate) const TIMEOUT_LINE: &str = "Suicide from timeout.\n";

impl SubmissionResult {
    /// A submission that could not be run: `invalid_input`, with why in stderr.
    pub(crate) fn invalid(sub_id: String, why: String) -> Self {
        SubmissionResult { sub_id, success: false, run_success: false, cost: 0.0, stdout: Some(String::new()), stderr: Some(why), reason: "invalid_input".into(), status: Some(Status::InvalidInput) }
    }

    /// A submission that no worker answered in time (code-judge's `queue_timeout`).
    pub(crate) fn queue_timeout(sub_id: String, waited_s: f64) -> Self {
        SubmissionResult { sub_id, success: false, run_success: false, cost: waited_s, stdout: None, stderr: None, reason: "queue_timeout".into(), status: None }
    }

    /// A submission the sandbox could not get answered (code-judge's `internal_error`), with why.
    pub(crate) fn internal_error(sub_id: String, why: String) -> Self {
        SubmissionResult { sub_id, success: false, run_success: false, cost: 0.0, stdout: Some(String::new()), stderr: Some(why), reason: "internal_error".into(), status: None }
    }

    /// The HTTP answer: without this sandbox's status, and without stdout and stderr for the
    /// `/judge` routes.
    pub(crate) fn for_http(self, verdicts_only: bool) -> Self {
        let (stdout, stderr) = if verdicts_only { (None, None) } else { (self.stdout, self.stderr) };
        SubmissionResult { stdout, stderr, status: None, ..self }
    }

    /// The tool result a rollout sees: this sandbox's status where a worker of ours wrote it,
    /// else read from code-judge's fields (a timeout's `Suicide from timeout.` line removed).
    pub fn to_tool_result(&self) -> ToolResult {
        let status = self.status.unwrap_or(match self.reason.as_str() {
            _ if self.run_success => Status::Ok,
            "worker_timeout" => Status::Timeout,
            "invalid_input" => Status::InvalidInput,
            "internal_error" | "queue_timeout" => Status::Crashed,
            _ => Status::Error,
        });
        let mut stdout = self.stdout.clone().unwrap_or_default();
        if status == Status::Timeout && stdout.ends_with(TIMEOUT_LINE) {
            stdout.truncate(stdout.len() - TIMEOUT_LINE.len());
        }
        let mut stderr = self.stderr.clone().unwrap_or_default();
        if self.reason == "queue_timeout" && stderr.is_empty() {
            stderr = "no tool worker answered in time (code-judge queue_timeout)".into();
        }
        ToolResult { status, stdout, stderr, elapsed_us: (self.cost.max(0.0) * 1e6) as u64 }
    }
}

/// A random 128-bit id in hex, for submissions and work items that come without one (as
/// code-judge makes a uuid4).
pub(crate) fn new_id() -> String {
    use std::hash::BuildHasher;
    let random = || std::collections::hash_map::RandomState::new().hash_one(0u8);
    format!("{:016x}{:016x}", random(), random())
}

/// The `sub_id` of a submission as JSON, or a new one.
pub(crate) fn sub_id_of(submission: &Value) -> String {
    submission.get("sub_id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(new_id)
}

/// Runs one submission (JSON as code-judge takes it) on `sandbox` and judges it as code-judge
/// does: Python only, expected output compared after stripping both ends, a timeout's stdout
/// ending with [`TIMEOUT_LINE`].
pub(crate) async fn judge(sandbox: &Sandbox, submission: Value) -> SubmissionResult {
    let sub: Submission = match serde_json::from_value(submission.clone()) {
        Ok(s) => s,
        Err(e) => return SubmissionResult::invalid(sub_id_of(&submission), format!("invalid submission: {e}")),
    };
    let sub_id = sub.sub_id.unwrap_or_else(new_id);
    if sub.kind != "python" {
        return SubmissionResult::invalid(sub_id, format!("unsupported submission type {:?}: this service runs python", sub.kind));
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
        reason: reason.into(),
        status: Some(result.status),
    }
}

/// A tool call as a code-judge Python submission.
pub(crate) fn submission_of(call: &ToolCall) -> Value {
    let mut sub = serde_json::json!({ "type": "python", "solution": call.code, "sub_id": new_id() });
    if let Some(stdin) = &call.stdin {
        sub["input"] = Value::String(stdin.clone());
    }
    sub
}
