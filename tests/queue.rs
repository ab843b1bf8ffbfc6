//! code-judge's Redis work queue end to end: a real `redis-server` on a unix socket in a
//! temporary folder (`.ci/run` installs Debian's `redis-server`), worker processes of
//! `rstar2-queue-worker`, the client, and the HTTP front end over the queue.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rstar2::sandbox::queue::{LocalRedis, QueueClient, QueueConfig};
use rstar2::sandbox::{Sandbox, Status, ToolCall};
use serde_json::{Value, json};

/// Child processes killed when the test ends, however it ends.
struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A private redis-server in `dir`; None when it is not installed (outside CI only).
fn start_redis(dir: &Path) -> Option<LocalRedis> {
    match LocalRedis::start(dir) {
        Ok(server) => Some(server),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "{e}");
            eprintln!("!!! {e}: the queue test did not run");
            None
        }
    }
}

fn queue_worker(uri: &str, interpreters: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rstar2-queue-worker")).arg(uri).arg(interpreters.to_string()).stderr(Stdio::null()).spawn().expect("starting rstar2-queue-worker")
}

fn redis(uri: &str) -> redis::Connection {
    redis::Client::open(uri).unwrap().get_connection().unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rstar2-queue-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two worker processes serve a long batch; the first is killed while it holds a submission
/// (delivery is at most once, so that one is lost), the client waits out the process time, sends
/// it again, and the second worker completes it: every submission answered once, with its own
/// output, and nothing left in Redis. Then the worker's other rules (work older than its life
/// time dropped, an unreadable item with ids answered invalid_input) and `sandbox serve --redis`:
/// the HTTP front end over the same queue.
#[test]
fn code_judge_redis_queue() {
    let dir = temp_dir();
    let Some(server) = start_redis(&dir) else { return };
    let uri = server.uri().to_string();
    let mut children = Killed(Vec::new());
    let config = QueueConfig { process_time: Duration::from_secs(2), ..QueueConfig::new(uri.clone()) };
    let client = QueueClient::connect(config.clone()).unwrap();
    let mut con = redis(&uri);
    let queued = |con: &mut redis::Connection| -> usize { redis::cmd("ZCARD").arg(config.work_queue()).query(con).unwrap() };

    // Worker A alone; item 0 (taken first: same score, smallest member) sleeps, so A still holds
    // it when it is killed.
    children.0.push(queue_worker(&uri, 1));
    wait_until("worker A registers", || client.status().unwrap().1 == 1);
    let n = 20;
    let submissions: Vec<Value> = (0..n)
        .map(|i| {
            let solution = if i == 0 { "import time\ntime.sleep(1.5)\nprint('slow')".to_string() } else { format!("print({i} * {i})") };
            json!({"type": "python", "solution": solution, "sub_id": format!("s{i}")})
        })
        .collect();
    let batch = {
        let client = client.clone();
        let submissions = submissions.clone();
        std::thread::spawn(move || client.judge_retrying(submissions, true, 4))
    };
    wait_until("worker A takes the first item", || queued(&mut con) == n - 1);
    let mut a = children.0.remove(0);
    a.kill().unwrap();
    a.wait().unwrap();
    children.0.push(queue_worker(&uri, 2));
    let results = batch.join().unwrap();
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        let want = if i == 0 { "slow\n".to_string() } else { format!("{}\n", i * i) };
        assert_eq!((r.sub_id.as_str(), r.success, r.stdout.as_deref(), r.reason.as_str()), (format!("s{i}").as_str(), true, Some(want.as_str()), ""), "submission {i}: {r:?}");
        assert_eq!(r.status, Some(Status::Ok));
    }
    assert_eq!(client.resubmitted(), 1, "exactly the submission lost with worker A is sent again");
    let left: Vec<String> = redis::cmd("KEYS").arg(config.result_queue("*")).query(&mut con).unwrap();
    assert!(left.is_empty(), "result lists left behind: {left:?}");
    assert_eq!(queued(&mut con), 0);

    // Short work that waited past its life time is dropped, never answered.
    let old = json!({"work_id": "old", "timestamp": 1.0, "long_running": false, "submission": {"type": "python", "solution": "print(1)", "sub_id": "o"}});
    redis::cmd("ZADD").arg(config.work_queue()).arg(1.0).arg(old.to_string()).query::<()>(&mut con).unwrap();
    // An item whose submission is not one (and without a timestamp: taken as now) is answered
    // invalid_input.
    let bad = json!({"work_id": "bad", "submission": {"sub_id": "b"}});
    redis::cmd("ZADD").arg(config.work_queue()).arg(2.0).arg(bad.to_string()).query::<()>(&mut con).unwrap();
    let answer: Option<(String, String)> = redis::cmd("BLPOP").arg(config.result_queue("bad")).arg(10).query(&mut con).unwrap();
    let answer: Value = serde_json::from_str(&answer.expect("the malformed item is answered").1).unwrap();
    assert_eq!((answer["sub_id"].as_str(), answer["reason"].as_str(), answer["success"].as_bool()), (Some("b"), Some("invalid_input"), Some(false)));
    wait_until("both items are taken", || queued(&mut con) == 0);
    let none: Option<(String, String)> = redis::cmd("BLPOP").arg(config.result_queue("old")).arg(0.5).query(&mut con).unwrap();
    assert!(none.is_none(), "expired work was answered: {none:?}");

    // The front end (`sandbox serve --redis`): routes over the queue, /status from Redis.
    let sandbox = Sandbox::queue(client.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, rstar2::sandbox::http::router(sandbox)).await });
    let (code, r) = crate::sandbox::http(addr, "POST", "/run", r#"{"type": "python", "solution": "print(int(input()) * 2)", "input": "21", "sub_id": "h"}"#);
    assert_eq!(code, 200);
    assert_eq!((r["sub_id"].as_str(), r["success"].as_bool(), r["stdout"].as_str()), (Some("h"), Some(true), Some("42\n")));
    assert!(r.get("status").is_none(), "HTTP answers carry only code-judge's fields: {r}");
    let (_, r) = crate::sandbox::http(
        addr,
        "POST",
        "/judge/batch",
        r#"{"type": "batch", "submissions": [{"type": "python", "solution": "print(3)", "expected_output": "3"}, {"type": "python", "solution": "print(3)", "expected_output": "4"}]}"#,
    );
    let verdicts: Vec<Option<bool>> = r["results"].as_array().unwrap().iter().map(|v| v["success"].as_bool()).collect();
    assert_eq!(verdicts, [Some(true), Some(false)]);
    assert!(r["results"][0].get("stdout").is_none());
    let (_, status) = crate::sandbox::http(addr, "GET", "/status", "");
    // Worker B's two pullers, and worker A's key, which outlives it (its time to live) as in
    // code-judge.
    assert_eq!((status["queue"].as_u64(), status["num_workers"].as_u64()), (Some(0), Some(3)));

    // A rollout's calls through a queue sandbox; sessions are refused there.
    let sandbox = Sandbox::queue(client);
    let results = runtime.block_on(sandbox.run_batch(vec![ToolCall::new("x = 6\nx * 7"), ToolCall::new("1/0")]));
    assert_eq!((results[0].status, results[0].stdout.as_str()), (Status::Ok, "42\n"));
    assert_eq!(results[1].status, Status::Error);
    assert!(results[1].stderr.contains("ZeroDivisionError"), "{}", results[1].stderr);
    let session = runtime.block_on(sandbox.session().run(ToolCall::new("1")));
    assert_eq!(session.status, Status::InvalidInput);
    drop(children);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
