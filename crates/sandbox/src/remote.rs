//! A remote sandbox over code-judge's HTTP API: `sandbox serve` on another machine (its worker
//! processes, or its Redis queue's workers), or code-judge's own front end. Calls go out as
//! long batches (`POST /run/long-batch`), so a busy server queues them rather than timing them
//! out; plain HTTP only (put a TLS-terminating proxy in front for anything else).

use std::time::Duration;

use serde_json::{Value, json};

use crate::judge::SubmissionResult;

/// Why the remote sandbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not an http:// URL.
    #[error("{url}: expected http://HOST:PORT (plain HTTP; put a TLS-terminating proxy in front for https)")]
    BadUrl {
        /// The URL given.
        url: String,
    },
    /// The request did not get through (connection refused or reset, a timeout).
    #[error("{url}: {message}")]
    Request {
        /// What was asked for.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// What was asked for.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// The answer is not what code-judge's API answers.
    #[error("{url}: unexpected answer: {message}")]
    Answer {
        /// The server.
        url: String,
        /// What was wrong with it.
        message: String,
    },
}

/// A code-judge HTTP server.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    agent: ureq::Agent,
}

/// Attempts per batch when the server cannot be reached (connection refused, reset): a
/// restarting server is waited for with a growing pause (0.5, 1, 2 s).
const TRIES: u32 = 4;

impl HttpClient {
    /// A client for `url` (http://HOST:PORT, with or without a trailing slash), checked to answer
    /// `/ping` now.
    pub fn connect(url: &str) -> Result<HttpClient, RemoteError> {
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(RemoteError::BadUrl { url: url.to_string() });
        }
        // No overall limit: a long batch waits for the server's workers (code-judge allows an
        // hour); connecting is bounded.
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_connect(Some(Duration::from_secs(10))).http_status_as_error(false).build().into();
        let client = HttpClient { base, agent };
        let pong = client.get("/ping")?;
        if pong != json!("pong") {
            return Err(client.answer(format!("/ping answered {pong}, not \"pong\"")));
        }
        Ok(client)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// (work waiting, workers) as the server's `/status` says.
    pub fn status(&self) -> Result<(usize, usize), RemoteError> {
        let v = self.get("/status")?;
        match (v["queue"].as_u64(), v["num_workers"].as_u64()) {
            (Some(q), Some(w)) => Ok((q as usize, w as usize)),
            _ => Err(self.answer(format!("/status answered {v}"))),
        }
    }

    /// Runs the submissions (code-judge's form) as one long batch; results in order. A batch
    /// the server cannot be reached for, after every try, comes back as `internal_error` results
    /// carrying the error.
    pub fn run(&self, submissions: Vec<Value>) -> Vec<SubmissionResult> {
        let n = submissions.len();
        let body = json!({ "type": "batch", "submissions": submissions }).to_string();
        let mut pause = Duration::from_millis(500);
        let mut last = String::new();
        for attempt in 0..TRIES {
            match self.post("/run/long-batch", &body) {
                Ok(answer) => match serde_json::from_value::<Vec<SubmissionResult>>(answer["results"].clone()) {
                    Ok(results) if results.len() == n => return results,
                    Ok(results) => {
                        last = self.answer(format!("{} results for {n} submissions", results.len())).to_string();
                        break;
                    }
                    Err(e) => {
                        last = self.answer(format!("results: {e}")).to_string();
                        break;
                    }
                },
                Err(e @ RemoteError::Request { .. }) => last = e.to_string(),
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
            if attempt + 1 < TRIES {
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
        (0..n).map(|_| SubmissionResult::internal_error(String::new(), last.clone())).collect()
    }

    fn get(&self, path: &str) -> Result<Value, RemoteError> {
        let response = self.agent.get(format!("{}{path}", self.base)).call();
        self.read(path, response)
    }

    fn post(&self, path: &str, body: &str) -> Result<Value, RemoteError> {
        let response = self.agent.post(format!("{}{path}", self.base)).header("content-type", "application/json").send(body);
        self.read(path, response)
    }

    fn read(&self, path: &str, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, RemoteError> {
        let mut response = response.map_err(|e| RemoteError::Request { url: format!("{}{path}", self.base), message: e.to_string() })?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(|e| RemoteError::Request { url: format!("{}{path}", self.base), message: e.to_string() })?;
        if !status.is_success() {
            return Err(RemoteError::Status { url: format!("{}{path}", self.base), status: status.as_u16(), body: text.chars().take(300).collect() });
        }
        serde_json::from_str(&text).map_err(|e| self.answer(format!("{path}: not JSON ({e})")))
    }

    fn answer(&self, message: String) -> RemoteError {
        RemoteError::Answer { url: self.base.clone(), message }
    }
}
