//! code-judge's Redis work queue (0xWJ/code-judge 0.0.5, `app/worker_manager.py`, `app/judge.py`),
//! both ends: [`serve_queue`] makes this sandbox a pool of code-judge workers that any number of
//! machines run, and [`QueueClient`] submits to such workers (ours or code-judge's), for
//! `sandbox serve --redis` and for rollouts whose tools run on other machines.
//!
//! The layout, keys prefixed `<key prefix>:<version>:` (`js:0.0.5:` by default):
//! - `work-queue`: a sorted set of work items (JSON `{"work_id", "timestamp", "long_running",
//!   "submission"}`) scored by submission time; workers take the oldest with `BZPOPMIN`.
//! - `result-queue:<work_id>`: a list the worker pushes the result JSON to, expiring after 60 s
//!   (an hour and a quarter-minute for long batches); the submitter pops it.
//! - `work-ids:<worker id>`: one key per live worker, refreshed before each pull, with a time to
//!   live; `/status` counts them.
//!
//! A work item still queued after its life time (4 s, long batches exempt) is dropped by the
//! worker and becomes a `queue_timeout` for its submitter; delivery is at most once (a worker that
//! dies holding an item loses it), so a submitter that gets `queue_timeout` submits again:
//! [`QueueClient::judge_retrying`].
//!
//! ```no_run
//! use rstar2_sandbox::queue::{QueueClient, QueueConfig};
//! let client = QueueClient::connect(QueueConfig::new("redis://127.0.0.1:6379")).unwrap();
//! let results = client.judge_retrying(vec![serde_json::json!({"type": "python", "solution": "print(6 * 7)"})], true, 4);
//! assert_eq!(results[0].stdout.as_deref(), Some("42\n"));
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Sandbox;
use crate::judge::{SubmissionResult, new_id, sub_id_of};

/// code-judge's version, part of every key.
pub const CODE_JUDGE_VERSION: &str = "0.0.5";

/// Unanswered results a submitter polls at once.
const WINDOW: usize = 512;

/// Why the queue could not be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// `redis-server` could not be started ([`LocalRedis`]).
    #[error("starting redis-server in {dir}: {why}")]
    Server {
        /// Its folder.
        dir: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Redis refused, closed the connection, or the URI is not one.
    #[error("redis at {uri}: {cause}")]
    Redis {
        /// The server.
        uri: String,
        /// What the client said (in the message, not `source()`, so anyhow's `{:#}` prints it
        /// once).
        cause: redis::RedisError,
    },
}

/// Where the queue is and its timings (code-judge's defaults, `app/config.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// `redis://host:port[/db]`, `rediss://...`, or `redis+unix:///path/to/socket`.
    pub uri: String,
    /// `REDIS_KEY_PREFIX` (`js`).
    pub key_prefix: String,
    /// The version in the keys ([`CODE_JUDGE_VERSION`]).
    pub version: String,
    /// `MAX_QUEUE_WORK_LIFE_TIME`: older work is dropped by workers (long batches exempt).
    pub work_life: Duration,
    /// `MAX_EXECUTION_TIME`: a failed run that took this long is reported as `worker_timeout`.
    pub execution_time: Duration,
    /// `MAX_EXECUTION_TIME + 5` (`MAX_PROCESS_TIME`): how long a submitter waits for results
    /// once none of its work is left in the queue, before calling the rest lost.
    pub process_time: Duration,
    /// `LONG_BATCH_MAX_QUEUE_WAIT_TIME`: the longest a long batch waits in all.
    pub long_wait: Duration,
    /// `REDIS_RESULT_EXPIRE`.
    pub result_expire: Duration,
    /// `REDIS_RESULT_LONG_BATCH_EXPIRE`.
    pub long_result_expire: Duration,
    /// `REDIS_WORKER_REGISTER_EXPIRE`: a worker's key outlives its last pull by this.
    pub worker_expire: Duration,
    /// How long one pull blocks before the worker refreshes its key (code-judge: 30 s; shorter
    /// here so a stopped worker exits promptly).
    pub block_timeout: Duration,
}

impl QueueConfig {
    /// code-judge's defaults for the server at `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        let execution_time = Duration::from_secs(10);
        let process_time = execution_time + Duration::from_secs(5);
        QueueConfig {
            uri: uri.into(),
            key_prefix: "js".into(),
            version: CODE_JUDGE_VERSION.into(),
            work_life: Duration::from_secs(4),
            execution_time,
            process_time,
            long_wait: Duration::from_secs(3600) + process_time,
            result_expire: Duration::from_secs(60),
            long_result_expire: Duration::from_secs(3600) + process_time,
            worker_expire: Duration::from_secs(120 + 30) + process_time,
            block_timeout: Duration::from_secs(1),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{}:{name}", self.key_prefix, self.version)
    }

    /// The sorted set of pending work.
    pub fn work_queue(&self) -> String {
        self.key("work-queue")
    }

    /// The list a work item's result is pushed to.
    pub fn result_queue(&self, work_id: &str) -> String {
        format!("{}{work_id}", self.key("result-queue:"))
    }

    /// A worker's registration key.
    pub fn worker_key(&self, worker_id: &str) -> String {
        format!("{}{worker_id}", self.key("work-ids:"))
    }

    fn connect(&self) -> Result<redis::Connection, QueueError> {
        let err = |cause| QueueError::Redis { uri: self.uri.clone(), cause };
        let client = redis::Client::open(self.uri.as_str()).map_err(err)?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(10)).map_err(err)?;
        redis::cmd("PING").query::<String>(&mut con).map_err(err)?;
        Ok(con)
    }

    fn redis_err(&self, cause: redis::RedisError) -> QueueError {
        QueueError::Redis { uri: self.uri.clone(), cause }
    }
}

/// One work item, as code-judge's `WorkPayload`.
#[derive(Serialize, Deserialize)]
struct WorkPayload {
    work_id: String,
    /// Absent: now (as code-judge's model fills it in).
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(default)]
    long_running: bool,
    submission: Value,
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Serves code-judge's queue with `sandbox`: `pullers` threads, each with its own connection and
/// worker key, take the oldest work item, run it, and push its result, until `stop` is set (each
/// notices within [`QueueConfig::block_timeout`]). A lost connection is retried every second, and
/// it, dropped work and unreadable items are said on stderr, as code-judge's workers log them.
/// Returns when every puller has stopped.
pub fn serve_queue(config: &QueueConfig, sandbox: &Sandbox, pullers: usize, stop: &AtomicBool) -> Result<(), QueueError> {
    // Fail fast on a wrong address or a server that is down.
    config.connect()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    std::thread::scope(|scope| {
        for _ in 0..pullers.max(1) {
            scope.spawn(|| {
                let worker_id = new_id();
                while !stop.load(Ordering::Relaxed) {
                    match config.connect().and_then(|mut con| pull_loop(config, &mut con, sandbox, &runtime, &worker_id, stop)) {
                        Ok(()) => return,
                        Err(e) => {
                            eprintln!("queue worker {worker_id}: {e}; reconnecting in 1 s");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

fn pull_loop(config: &QueueConfig, con: &mut redis::Connection, sandbox: &Sandbox, runtime: &tokio::runtime::Runtime, worker_id: &str, stop: &AtomicBool) -> Result<(), QueueError> {
    let err = |e| config.redis_err(e);
    let work_queue = config.work_queue();
    while !stop.load(Ordering::Relaxed) {
        redis::cmd("SET").arg(config.worker_key(worker_id)).arg(1).arg("EX").arg(config.worker_expire.as_secs().max(1)).query::<()>(con).map_err(err)?;
        let item: Option<(String, String, f64)> = redis::cmd("BZPOPMIN").arg(&work_queue).arg(config.block_timeout.as_secs_f64()).query(con).map_err(err)?;
        let Some((_, payload, _)) = item else { continue };
        let (queue, long_running, result) = match serde_json::from_str::<WorkPayload>(&payload) {
            Ok(work) => {
                let waited = now_s() - work.timestamp.unwrap_or_else(now_s);
                if !work.long_running && waited >= config.work_life.as_secs_f64() {
                    eprintln!("queue worker {worker_id}: work {} waited {waited:.2} s in the queue (life time {:?}): dropped; more workers needed?", work.work_id, config.work_life);
                    continue;
                }
                let result = if work.submission.get("type").and_then(Value::as_str) == Some("batch") {
                    // code-judge's workers cannot run a batch in one item either (its front end
                    // splits batches into single submissions).
                    SubmissionResult::invalid(sub_id_of(&work.submission), "a work item holds one submission, not a batch".into())
                } else {
                    runtime.block_on(crate::judge::judge(sandbox, work.submission))
                };
                (config.result_queue(&work.work_id), work.long_running, result)
            }
            Err(e) => {
                eprintln!("queue worker {worker_id}: an item that is not a work payload ({e}): answered invalid_input where it names its ids, else dropped");
                // Answer where the item names where to (as code-judge does), else drop it.
                let raw: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
                let (Some(work_id), Some(sub_id)) = (raw.get("work_id").and_then(Value::as_str), raw.pointer("/submission/sub_id").and_then(Value::as_str)) else {
                    continue;
                };
                let long = raw.get("long_running").and_then(Value::as_bool).unwrap_or(false);
                (config.result_queue(work_id), long, SubmissionResult::invalid(sub_id.into(), format!("invalid work payload: {e}")))
            }
        };
        let expire = if long_running { config.long_result_expire } else { config.result_expire };
        let json = serde_json::to_string(&result).expect("results serialize");
        redis::pipe().cmd("RPUSH").arg(&queue).arg(json).ignore().cmd("EXPIRE").arg(&queue).arg(expire.as_secs().max(1)).ignore().query::<()>(con).map_err(err)?;
    }
    Ok(())
}

/// Submits to code-judge's queue and collects the results. Cheap to clone; blocking calls (use
/// `spawn_blocking` from async code).
#[derive(Clone)]
pub struct QueueClient {
    config: Arc<QueueConfig>,
    resubmitted: Arc<AtomicU64>,
}

impl QueueClient {
    /// Checks that the server answers.
    pub fn connect(config: QueueConfig) -> Result<Self, QueueError> {
        config.connect()?;
        Ok(QueueClient { config: Arc::new(config), resubmitted: Arc::default() })
    }

    /// Submissions [`judge_retrying`](Self::judge_retrying) has sent again so far (each one
    /// came back `queue_timeout`: dropped for age, or lost with a worker).
    pub fn resubmitted(&self) -> u64 {
        self.resubmitted.load(Ordering::Relaxed)
    }

    /// Its configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Work items waiting and workers registered (code-judge's `/status`).
    pub fn status(&self) -> Result<(usize, usize), QueueError> {
        let err = |e| self.config.redis_err(e);
        let mut con = self.config.connect()?;
        let queued: usize = redis::cmd("ZCARD").arg(self.config.work_queue()).query(&mut con).map_err(err)?;
        let pattern = self.config.worker_key("*");
        let mut workers = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(100).query(&mut con).map_err(err)?;
            workers += keys.len();
            if next == 0 {
                return Ok((queued, workers));
            }
            cursor = next;
        }
    }

    /// Submits every submission (code-judge JSON) at once and waits for their results, in order:
    /// one try, as code-judge's front end does. Work that no worker answered (dropped for age, or
    /// taken by a worker that died) comes back as `queue_timeout`; so do all of them when Redis
    /// fails, with the error in stderr. `long` is code-judge's long batch (no age limit, an hour
    /// to finish).
    pub fn judge(&self, mut submissions: Vec<Value>, long: bool) -> Vec<SubmissionResult> {
        let ids = with_sub_ids(&mut submissions);
        let start = Instant::now();
        match self.try_judge(submissions, &ids, long) {
            Ok(results) => results,
            Err(e) => {
                let waited = start.elapsed().as_secs_f64();
                ids.into_iter().map(|id| SubmissionResult { stderr: Some(e.to_string()), ..SubmissionResult::queue_timeout(id, waited) }).collect()
            }
        }
    }

    /// [`judge`](Self::judge), submitting again (with new work ids) whatever came back as
    /// `queue_timeout`, up to `tries` times in all (code-judge's client retries 4 times).
    pub fn judge_retrying(&self, mut submissions: Vec<Value>, long: bool, tries: usize) -> Vec<SubmissionResult> {
        // Every try carries the same sub_id.
        with_sub_ids(&mut submissions);
        let mut results: Vec<Option<SubmissionResult>> = vec![None; submissions.len()];
        let mut left: Vec<usize> = (0..submissions.len()).collect();
        for attempt in 0..tries.max(1) {
            let batch: Vec<Value> = left.iter().map(|&i| submissions[i].clone()).collect();
            let answers = self.judge(batch, long);
            let mut again = Vec::new();
            for (i, answer) in left.into_iter().zip(answers) {
                if answer.reason == "queue_timeout" && attempt + 1 < tries {
                    again.push(i);
                }
                results[i] = Some(answer);
            }
            self.resubmitted.fetch_add(again.len() as u64, Ordering::Relaxed);
            left = again;
            if left.is_empty() {
                break;
            }
        }
        results.into_iter().map(|r| r.expect("every submission answered")).collect()
    }

    /// One try of [`judge`](Self::judge); `ids` are the submissions' `sub_id`s.
    fn try_judge(&self, submissions: Vec<Value>, ids: &[String], long: bool) -> Result<Vec<SubmissionResult>, QueueError> {
        let config = &*self.config;
        let err = |e| config.redis_err(e);
        let mut con = config.connect()?;
        let start = Instant::now();
        let tag = new_id();
        let timestamp = now_s();
        // Zero-padded, so that the queue's order (one score, members by bytes: the work id
        // comes first in the JSON) is submission order, which the results are awaited in.
        let work_id = |i: usize| format!("{{{tag}}}:{i:08}");
        let keys: Vec<String> = (0..submissions.len()).map(|i| config.result_queue(&work_id(i))).collect();
        for (chunk_start, chunk) in submissions.chunks(1000).enumerate().map(|(c, s)| (c * 1000, s)) {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(config.work_queue());
            for (j, submission) in chunk.iter().enumerate() {
                let work = WorkPayload { work_id: work_id(chunk_start + j), timestamp: Some(timestamp), long_running: long, submission: submission.clone() };
                zadd.arg(timestamp).arg(serde_json::to_string(&work).expect("payloads serialize"));
            }
            zadd.query::<()>(&mut con).map_err(err)?;
        }
        let mut results: Vec<Option<SubmissionResult>> = vec![None; submissions.len()];
        let index: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        // Unanswered, in submission order; only a window of the first ones is polled (each poll
        // costs Redis a command per key, and Redis serves the workers too).
        let mut left: Vec<&str> = keys.iter().map(String::as_str).collect();
        let deadline = start + if long { config.long_wait } else { config.work_life + config.process_time };
        // Since when none of this batch's work is left in the queue and the window got nothing.
        let mut idle_since: Option<Instant> = None;
        while !left.is_empty() && Instant::now() < deadline {
            let window = &left[..left.len().min(WINDOW)];
            let mut pipe = redis::pipe();
            for key in window {
                pipe.cmd("LPOP").arg(*key);
            }
            let popped: Vec<Option<String>> = pipe.query(&mut con).map_err(err)?;
            let mut got: Vec<(String, String)> = window.iter().zip(popped).filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect();
            if got.is_empty() {
                let wait = config.block_timeout.as_secs_f64().min(deadline.saturating_duration_since(Instant::now()).as_secs_f64()).max(0.01);
                let popped: Option<(String, String)> = redis::cmd("BLPOP").arg(&window[..window.len().min(256)]).arg(wait).query(&mut con).map_err(err)?;
                got.extend(popped);
            }
            if got.is_empty() {
                // The queue is ordered by time: if its oldest item is newer than this batch (or
                // it is empty), all of the batch was taken, and answers are owed within the
                // process time; the window's that have not come by then were lost with a
                // worker (later results wait in their lists and are still collected).
                let oldest: Vec<(String, f64)> = redis::cmd("ZRANGE").arg(config.work_queue()).arg(0).arg(0).arg("WITHSCORES").query(&mut con).map_err(err)?;
                if oldest.first().is_none_or(|(_, score)| *score > timestamp) {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= config.process_time {
                        let lost = window.len();
                        left.drain(..lost);
                        idle_since = None;
                    }
                }
                continue;
            }
            idle_since = None;
            for (key, json) in got {
                let Some(&i) = index.get(key.as_str()) else { continue };
                let mut result = serde_json::from_str::<SubmissionResult>(&json).unwrap_or_else(|e| SubmissionResult {
                    reason: "internal_error".into(),
                    stderr: Some(format!("unreadable result from a worker: {e}")),
                    ..SubmissionResult::queue_timeout(ids[i].clone(), 0.0)
                });
                // code-judge's front end: a failed run that used the whole time was a timeout.
                if !result.run_success && result.reason.is_empty() && result.cost >= config.execution_time.as_secs_f64() {
                    result.reason = "worker_timeout".into();
                }
                results[i] = Some(result);
            }
            left.retain(|k| results[index[k]].is_none());
        }
        for chunk in keys.chunks(512) {
            redis::cmd("DEL").arg(chunk).query::<()>(&mut con).map_err(err)?;
        }
        let waited = start.elapsed().as_secs_f64();
        Ok(results.into_iter().zip(ids).map(|(r, id)| r.unwrap_or_else(|| SubmissionResult::queue_timeout(id.clone(), waited))).collect())
    }
}

/// Gives each submission object without a `sub_id` a new one (the results carry them;
/// code-judge's worker would make one up otherwise), and returns every submission's id.
fn with_sub_ids(submissions: &mut [Value]) -> Vec<String> {
    submissions
        .iter_mut()
        .map(|sub| {
            let id = sub_id_of(sub);
            if let Value::Object(map) = sub {
                map.entry("sub_id").or_insert_with(|| Value::String(id.clone()));
            }
            id
        })
        .collect()
}

/// A private `redis-server` (Debian's `redis-server` package) on a unix socket in a folder of
/// its own, with no TCP port and nothing saved; stopped when dropped. For one machine's queue,
/// tests and benchmarks.
pub struct LocalRedis {
    child: Child,
    uri: String,
}

impl LocalRedis {
    /// Starts one in `dir` (created if missing) and waits until it answers.
    pub fn start(dir: &Path) -> Result<Self, QueueError> {
        let fail = |why: String| QueueError::Server { dir: dir.to_path_buf(), why };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("{e} (apt-get install redis-server)")))?;
        let server = LocalRedis { child, uri: format!("redis+unix://{}", socket.display()) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while QueueConfig::new(server.uri.clone()).connect().is_err() {
            if Instant::now() > deadline {
                return Err(fail("it did not answer within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Its address (`redis+unix://DIR/redis.sock`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// How many times the server has run `command` (from `INFO commandstats`), e.g. to see that
    /// work went through it.
    pub fn calls(&self, command: &str) -> Result<u64, QueueError> {
        let config = QueueConfig::new(self.uri.clone());
        let mut con = config.connect()?;
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut con).map_err(|e| config.redis_err(e))?;
        let key = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        Ok(info.lines().find_map(|l| l.strip_prefix(&key)).and_then(|rest| rest.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0))
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
