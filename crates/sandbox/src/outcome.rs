//! What goes into a tool call and what comes out of it.

use serde::{Deserialize, Serialize};

/// One tool call: Python source and the text its standard input reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Python source, run as a `__main__` module in a fresh globals dict.
    pub code: String,
    /// Text served to `input()` and `sys.stdin`; empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

impl ToolCall {
    /// A call with no standard input.
    pub fn new(code: impl Into<String>) -> Self {
        Self { code: code.into(), stdin: None }
    }

    /// A call whose standard input reads `stdin`.
    pub fn with_stdin(code: impl Into<String>, stdin: impl Into<String>) -> Self {
        Self { code: code.into(), stdin: Some(stdin.into()) }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Ran to the end (or `sys.exit(0)`).
    Ok,
    /// Raised an exception (traceback in stderr) or exited with a non-zero code.
    Error,
    /// Still running at the deadline; stopped.
    Timeout,
    /// Printed more than the hard output cap; stopped.
    OutputLimit,
    /// Ran out of its memory budget (`MemoryError`, or the worker process hit its limit).
    MemoryLimit,
    /// The interpreter or its worker process died; it was replaced.
    Crashed,
    /// The request itself was unusable (too large, malformed); nothing ran.
    InvalidInput,
}

impl Status {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::OutputLimit => "output_limit",
            Status::MemoryLimit => "memory_limit",
            Status::Crashed => "crashed",
            Status::InvalidInput => "invalid_input",
        }
    }

    pub(crate) fn from_kind(kind: &str) -> Status {
        match kind {
            "ok" => Status::Ok,
            "output_limit" => Status::OutputLimit,
            "memory_limit" => Status::MemoryLimit,
            _ => Status::Error,
        }
    }
}

/// The result of one call. Serializes as `{"status", "stdout", "stderr", "elapsed_us"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// How the call ended.
    pub status: Status,
    /// Captured standard output, truncated head + tail to the configured size.
    pub stdout: String,
    /// Captured standard error (tracebacks end with `ExcType: message`), truncated the same way.
    pub stderr: String,
    /// Wall time of the call inside the sandbox, in microseconds (queueing excluded).
    pub elapsed_us: u64,
}

impl ToolResult {
    pub(crate) fn failure(status: Status, stderr: impl Into<String>, elapsed_us: u64) -> Self {
        ToolResult { status, stdout: String::new(), stderr: stderr.into(), elapsed_us }
    }
}

/// Shortens `text` to at most about `max_chars` characters by keeping its head and its tail
/// around a marker that says how much was cut. Text within the limit is returned unchanged.
///
/// ```
/// let t = rstar2_sandbox::truncate_middle(&"x".repeat(30), 10);
/// assert!(t.starts_with("xxxxx") && t.ends_with("xxxxx") && t.contains("20 characters"));
/// ```
pub fn truncate_middle(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let head = max_chars / 2;
    let tail = max_chars - head;
    let cut = total - head - tail;
    let head_end = text.char_indices().nth(head).map_or(text.len(), |(i, _)| i);
    let tail_start = text.char_indices().nth(total - tail).map_or(text.len(), |(i, _)| i);
    format!("{}\n...[{cut} characters truncated]...\n{}", &text[..head_end], &text[tail_start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text() {
        assert_eq!(truncate_middle("hello", 5), "hello");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        let text = "é".repeat(10);
        assert_eq!(truncate_middle(&text, 4), "éé\n...[6 characters truncated]...\néé");
    }

    #[test]
    fn status_names_round_trip_through_json() {
        for s in [Status::Ok, Status::OutputLimit, Status::InvalidInput] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        }
    }
}
