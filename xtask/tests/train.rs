//! `cargo xtask train` as a user runs it: a short run end to end, resume after a stop giving the
//! same metrics as an uninterrupted run, and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use rstar2_sandbox::queue::LocalRedis;
use serde_json::Value;

const SHORT: &str = r#"
[data]
train_problems = 200
test_problems = 6
[sft]
examples = 48
epochs = 1
batch_size = 8
[rl]
group_size = 2
oversample = 2
prompts_per_step = 2
checkpoint_every = 1
dispatch = "lockstep"
[[rl.stages]]
steps = 2
max_response_tokens = 96
max_turns = 3
[[rl.stages]]
steps = 2
max_response_tokens = 128
max_turns = 3
filter_solved = { problems = 4, samples = 2 }
[eval]
samples = 2
max_response_tokens = 96
max_turns = 3
"#;

/// One SFT step and one RL step: small enough for a software GPU adapter.
const MINI: &str = r#"
[data]
train_problems = 100
test_problems = 2
[sft]
examples = 8
epochs = 1
batch_size = 8
[rl]
group_size = 2
oversample = 2
prompts_per_step = 1
dispatch = "lockstep"
[[rl.stages]]
steps = 1
max_response_tokens = 48
max_turns = 2
[eval]
samples = 1
max_response_tokens = 48
max_turns = 2
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rstar2-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn xtask(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned(), out.status.success())
}

/// Every line of a run's metrics.jsonl.
fn metric_lines(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect()
}

fn rl_lines(run: &Path) -> Vec<Value> {
    metric_lines(run).into_iter().filter(|v| v["phase"] == "rl" || v["phase"] == "eval").collect()
}

/// Loss and gradient norm of a run's first SFT step.
fn first_sft_step(run: &Path) -> (f64, f64) {
    let sft = metric_lines(run).into_iter().find(|v| v["phase"] == "sft").expect("an SFT step");
    (sft["loss"].as_f64().unwrap(), sft["grad_norm"].as_f64().unwrap())
}

/// The fields that depend only on the computation (not on timing).
fn deterministic(v: &Value) -> Value {
    if v["phase"] == "eval" {
        let mut e = v["eval"].clone();
        e.as_object_mut().unwrap().remove("seconds");
        return serde_json::json!({"label": v["label"], "eval": e});
    }
    let keys = ["rl_step", "reward_mean", "kept_rollouts", "kept_groups", "loss", "grad_norm", "response_length", "positive_tool_error_ratio", "lr", "finish_reasons"];
    Value::Object(keys.iter().map(|k| (k.to_string(), v[*k].clone())).collect())
}

#[test]
fn short_run_then_resume_matches_an_uninterrupted_run() {
    let dir = scratch("run");
    let config = dir.join("short.toml");
    // The final model is also evaluated on a small file of its own.
    let extra = dir.join("extra.jsonl");
    std::fs::write(&extra, "{\"question\": \"What is 17 * 3?\", \"answer\": \"51\"}\n{\"question\": \"What is 2 ** 10?\", \"answer\": \"1024\"}\n").unwrap();
    std::fs::write(&config, SHORT.replace("[data]\n", &format!("[data]\nalso_test = [{:?}]\n", extra.to_str().unwrap()))).unwrap();
    let runs = dir.join("runs");
    let (runs_s, config_s) = (runs.to_str().unwrap(), config.to_str().unwrap());

    let (out, err, ok) = xtask(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", "whole"]);
    assert!(ok, "{out}\n{err}");
    let whole = runs.join("whole");
    assert!(out.contains("held-out pass@1"), "{out}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(whole.join("summary.json")).unwrap()).unwrap();
    for key in ["before_sft", "after_sft", "after_rl"] {
        let p = summary["eval"][key]["pass_at_1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{key}: {p}");
        assert_eq!(summary["eval"][key]["k"], 2);
    }
    assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["stages"].as_array().unwrap().len(), 2);
    for png in ["reward.png", "tool_errors.png", "response_length.png"] {
        let bytes = std::fs::read(whole.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }
    assert!(std::fs::read_to_string(whole.join("report.md")).unwrap().contains("| after SFT |"));
    assert_eq!(summary["evals"]["final_extra"]["problems"], 2, "the also_test evaluation");
    assert!(std::fs::read_to_string(whole.join("report.md")).unwrap().contains("| extra | 2 |"));
    let lines = rl_lines(&whole);
    assert_eq!(lines.iter().filter(|v| v["phase"] == "rl").count(), 4);
    // The final model folder is a loadable HF folder: evaluate it with `cargo xtask eval`.
    let model = whole.join("model");
    let (eval_out, err, ok) = xtask(&["eval", "--model", model.to_str().unwrap(), "--data", "synthetic", "--problems", "3", "--samples", "1", "--max-tokens", "64"]);
    assert!(ok, "{err}");
    let e: Value = serde_json::from_str(eval_out.trim()).unwrap();
    assert_eq!(e["problems"], 3);

    // Stop after 3 RL steps (inside stage 2), leave a stray metrics line as a kill would, resume.
    let (out, err, ok) = xtask(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", "split", "--stop-after-rl-steps", "3"]);
    assert!(ok, "{out}\n{err}");
    let split = runs.join("split");
    assert!(!split.join("summary.json").exists());
    let mut metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    metrics.push_str("{\"phase\":\"rl\",\"rl_step\":99}\n");
    std::fs::write(split.join("metrics.jsonl"), metrics).unwrap();
    let (out, err, ok) = xtask(&["train", "--resume", split.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    let a: Vec<Value> = lines.iter().map(deterministic).collect();
    let b: Vec<Value> = rl_lines(&split).iter().map(deterministic).collect();
    assert_eq!(a, b, "resumed run differs from the uninterrupted one");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two seeds x two algorithms x two RL steps (one per stage, the second filtered).
const STUDY: &str = r#"
[data]
train_problems = 200
test_problems = 4
[sft]
examples = 32
epochs = 1
batch_size = 8
[rl]
group_size = 2
oversample = 2
prompts_per_step = 2
dispatch = "lockstep"
[[rl.stages]]
steps = 1
max_response_tokens = 96
max_turns = 3
[[rl.stages]]
steps = 1
max_response_tokens = 128
max_turns = 3
filter_solved = { problems = 4, samples = 2 }
[eval]
samples = 2
max_response_tokens = 96
max_turns = 3
"#;

#[test]
fn replicate_runs_every_run_and_a_killed_study_resumes_to_the_same_report() {
    let dir = scratch("study");
    let config = dir.join("study.toml");
    std::fs::write(&config, STUDY).unwrap();
    let runs = dir.join("runs");
    let study = |name: &str, extra: &[&str]| {
        let mut args = vec!["replicate", "--seeds", "2", "--algos", "grpo,grpo-roc", "--config", config.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap(), "--name", name, "--device", "cpu"];
        args.extend_from_slice(extra);
        let (out, err, ok) = xtask(&args);
        assert!(ok, "{out}\n{err}");
        out
    };
    study("whole", &[]);
    let whole = runs.join("whole");
    for run in ["grpo-seed1", "grpo-roc-seed1", "grpo-seed2", "grpo-roc-seed2"] {
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(whole.join(run).join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["stages"].as_array().unwrap().len(), 2, "{run}");
        assert_eq!(summary["evals"]["after_sft"]["pass_at_k"].as_object().unwrap().len(), 2, "{run}: pass@1 and pass@2 from 2 samples");
        assert_eq!(rl_lines(&whole.join(run)).iter().filter(|v| v["phase"] == "rl").count(), 2, "{run}");
    }
    // Both algorithms of a seed start from the same SFT: identical after-SFT evaluations.
    let after_sft = |run: &str| serde_json::from_str::<Value>(&std::fs::read_to_string(whole.join(run).join("summary.json")).unwrap()).unwrap()["evals"]["after_sft"]["per_problem"].clone();
    assert_eq!(after_sft("grpo-seed1"), after_sft("grpo-roc-seed1"));
    let report = std::fs::read_to_string(whole.join("report.md")).unwrap();
    for claim in ["(1) RL raises", "(2) RoC's tool-error ratio", "(3) RoC's responses", "(4) the stage-2 filter"] {
        assert!(report.contains(claim), "{claim}\n{report}");
    }
    assert!(report.contains("pass@2"), "{report}");
    for png in ["study_reward.png", "study_tool_errors.png", "study_response_length.png", "study_tool_calls.png", "study_pass_at_k.png"] {
        let bytes = std::fs::read(whole.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }

    // Killed after three runs, then started again: the finished runs are skipped, untouched.
    let out = study("cut", &["--stop-after-runs", "3"]);
    let cut = runs.join("cut");
    assert!(out.contains("stopped after 3 runs"), "{out}");
    assert!(!cut.join("report.md").exists() && !cut.join("grpo-roc-seed2/summary.json").exists());
    let before: Vec<String> = ["grpo-seed1", "grpo-roc-seed1", "grpo-seed2"].iter().map(|r| std::fs::read_to_string(cut.join(r).join("metrics.jsonl")).unwrap()).collect();
    let out = study("cut", &[]);
    assert_eq!(out.matches(": finished, skipped").count() + 2 * out.matches("every run finished, skipped").count(), 3, "{out}");
    let after: Vec<String> = ["grpo-seed1", "grpo-roc-seed1", "grpo-seed2"].iter().map(|r| std::fs::read_to_string(cut.join(r).join("metrics.jsonl")).unwrap()).collect();
    assert_eq!(before, after, "finished runs were run again");
    assert_eq!(std::fs::read_to_string(cut.join("report.md")).unwrap(), report, "the resumed study's report differs");
    // Other settings under the same name are refused.
    let (_, err, ok) = xtask(&["replicate", "--seeds", "3", "--config", config.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap(), "--name", "cut"]);
    assert!(!ok && err.contains("other settings"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = scratch("bad");
    let runs = dir.join("runs");
    let runs_s = runs.to_str().unwrap();
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[rl]\nlearning_rate = 1e-6\n").unwrap();
    let (_, err, ok) = xtask(&["train", "--config", config.to_str().unwrap(), "--runs-dir", runs_s]);
    assert!(!ok && err.contains("learning_rate"), "{err}");
    let (_, err, ok) = xtask(&["train", "--model", dir.join("nope").to_str().unwrap(), "--runs-dir", runs_s]);
    assert!(!ok && err.contains("nope") && err.contains("config.json"), "{err}");
    let data = dir.join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"What is 1+1?\", \"answer\": \"2\"}\n{\"prompt\": broken\n").unwrap();
    let (_, err, ok) = xtask(&["train", "--data", data.to_str().unwrap(), "--runs-dir", runs_s]);
    assert!(!ok && err.contains("line 2"), "{err}");
    let (_, err, ok) = xtask(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(!ok && err.contains("not a run folder"), "{err}");
    let (_, err, ok) = xtask(&["train", "--device", "tpu", "--runs-dir", runs_s]);
    assert!(!ok && err.contains("tpu"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[sandbox] redis`: the same short run with its tool calls sent through code-judge's Redis
/// queue to a `sandbox worker --redis` process gives the RL metrics of the run with the local
/// pool (the tool results are the same Python: in-process here, the default, and in the
/// worker's processes there), and its calls did go through Redis. A server that is not there
/// is a clear error.
#[test]
fn rollouts_through_the_redis_queue_match_local_tools() {
    let dir = scratch("redis");
    let server = match LocalRedis::start(&dir.join("redis")) {
        Ok(server) => server,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "{e}");
            eprintln!("!!! {e}: the training-through-Redis test did not run");
            return;
        }
    };
    let uri = server.uri().to_string();
    let runs = dir.join("runs");
    let runs_s = runs.to_str().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let missing = write("missing.toml", format!("{SHORT}\n[sandbox]\nredis = {:?}\n", format!("redis+unix://{}", dir.join("none.sock").display())));
    let (_, err, ok) = xtask(&["train", "--config", &missing, "--runs-dir", runs_s, "--name", "missing"]);
    assert!(!ok && err.contains("[sandbox] redis") && err.contains("none.sock"), "{err}");

    let mut worker = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["sandbox", "worker", "--workers", "2", "--redis", &uri]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let local = write("local.toml", SHORT.to_string());
    let remote = write("remote.toml", format!("{SHORT}\n[sandbox]\nredis = {uri:?}\n"));
    let (out, err, ok) = xtask(&["train", "--config", &local, "--runs-dir", runs_s, "--name", "local"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("in-process interpreters on this machine"), "{out}");
    let pushed_before = server.calls("rpush").unwrap();
    let (out, err, ok) = xtask(&["train", "--config", &remote, "--runs-dir", runs_s, "--name", "remote"]);
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("tools: code-judge queue js:0.0.5:work-queue"), "{out}");
    let answered = server.calls("rpush").unwrap() - pushed_before;
    let a: Vec<Value> = rl_lines(&runs.join("local")).iter().map(deterministic).collect();
    let b: Vec<Value> = rl_lines(&runs.join("remote")).iter().map(deterministic).collect();
    assert_eq!(a, b, "the run through the queue differs from the local one");
    // Tool calls per episode of the evaluations (RL steps' episodes call tools too).
    let calls: f64 = rl_lines(&runs.join("remote")).iter().filter_map(|v| v["eval"]["tool_calls_per_episode"].as_f64()).sum();
    eprintln!("tool calls per episode summed over the evaluations: {calls}; results pushed through Redis: {answered}");
    assert!(calls > 0.0 && answered > 0, "the rollouts made no tool call through the queue (calls/episode {calls}, results {answered})");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[sandbox] url`: the rollouts' tool calls go to another process's `sandbox serve` over HTTP
/// (as GPU nodes would use a CPU node's), and the run equals the one with local tools.
#[test]
fn rollouts_through_a_remote_http_sandbox_match_local_tools() {
    let dir = scratch("http");
    let runs = dir.join("runs");
    let runs_s = runs.to_str().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let port = |()| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gone = port(());
    let missing = write("missing.toml", format!("{SHORT}\n[sandbox]\nurl = \"http://{gone}\"\n"));
    let (_, err, ok) = xtask(&["train", "--config", &missing, "--runs-dir", runs_s, "--name", "missing"]);
    assert!(!ok && err.contains("[sandbox] url") && err.contains(&gone.to_string()), "{err}");
    let both = write("both.toml", format!("{SHORT}\n[sandbox]\nurl = \"http://{gone}\"\nredis = \"redis://127.0.0.1:1\"\n"));
    let (_, err, ok) = xtask(&["train", "--config", &both, "--runs-dir", runs_s, "--name", "both"]);
    assert!(!ok && err.contains("set one"), "{err}");

    let addr = port(());
    let mut server = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["sandbox", "serve", "--workers", "2", "--addr", &addr.to_string()]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let url = format!("http://{addr}");
    let started = std::time::Instant::now();
    while rstar2_sandbox::remote::HttpClient::connect(&url).is_err() {
        assert!(started.elapsed().as_secs() < 60, "sandbox serve did not answer at {url}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let local = write("local.toml", SHORT.to_string());
    let remote = write("remote.toml", format!("{SHORT}\n[sandbox]\nurl = {url:?}\n"));
    let (out, err, ok) = xtask(&["train", "--config", &local, "--runs-dir", runs_s, "--name", "local"]);
    assert!(ok, "{out}\n{err}");
    let (out, err, ok) = xtask(&["train", "--config", &remote, "--runs-dir", runs_s, "--name", "remote"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&format!("tools: code-judge HTTP server {url} (2 workers")), "{out}");
    let a: Vec<Value> = rl_lines(&runs.join("local")).iter().map(deterministic).collect();
    let b: Vec<Value> = rl_lines(&runs.join("remote")).iter().map(deterministic).collect();
    assert_eq!(a, b, "the run through the HTTP sandbox differs from the local one");
    let calls: f64 = rl_lines(&runs.join("remote")).iter().filter_map(|v| v["eval"]["tool_calls_per_episode"].as_f64()).sum();
    assert!(calls > 0.0, "the rollouts made no tool call");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --device gpu:0` runs the whole recipe on the WGSL backend (lavapipe in CI), and its
/// first SFT step computes the CPU run's loss and gradient norm on the same data and weights.
#[test]
fn gpu_run_matches_the_cpu_run_on_the_first_step() {
    if rstar2_gpu::test_gpu().is_none() {
        return;
    }
    let dir = scratch("gpu");
    let config = dir.join("mini.toml");
    std::fs::write(&config, MINI).unwrap();
    let runs = dir.join("runs");
    let (runs_s, config_s) = (runs.to_str().unwrap(), config.to_str().unwrap());
    let mut first_step = Vec::new();
    for device in ["cpu", "gpu:0"] {
        let (out, err, ok) = xtask(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", device, "--device", device]);
        assert!(ok, "{device}: {out}\n{err}");
        assert!(err.contains(&format!("device: {}", if device == "cpu" { "cpu" } else { "gpu: " })), "{err}");
        assert!(runs.join(device).join("model/model.safetensors").exists());
        first_step.push(first_sft_step(&runs.join(device)));
    }
    let ((cl, cn), (gl, gn)) = (first_step[0], first_step[1]);
    assert!((cl - gl).abs() < 1e-4 * cl && (cn - gn).abs() < 1e-3 * cn, "first SFT step: CPU loss {cl} norm {cn}, GPU loss {gl} norm {gn}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two SFT steps and three RL steps (lockstep tool dispatch): data parallel must not change
/// what is learned.
const DATA_PARALLEL: &str = r#"
[data]
train_problems = 100
test_problems = 2
[sft]
examples = 32
epochs = 2
batch_size = 8
[rl]
group_size = 2
oversample = 2
prompts_per_step = 6
checkpoint_every = 1
dispatch = "lockstep"
[[rl.stages]]
steps = 3
max_response_tokens = 96
max_turns = 2
[eval]
samples = 1
max_response_tokens = 48
max_turns = 2
"#;

fn final_params(run: &Path) -> rstar2_model::Params {
    let model = run.join("model");
    let config = rstar2_model::Config::from_file(&model.join("config.json")).unwrap();
    rstar2_model::Params::load(&model, &config).unwrap()
}

/// Largest |a - b| over every parameter, and the largest |a| (for scale).
fn max_difference(a: &rstar2_model::Params, b: &rstar2_model::Params) -> (f32, f32) {
    let mut diff = 0.0f32;
    let mut scale = 0.0f32;
    for (x, y) in a.data.iter().zip(&b.data) {
        for (p, q) in x.iter().zip(y) {
            diff = diff.max((p - q).abs());
            scale = scale.max(p.abs());
        }
    }
    (diff, scale)
}

/// Runs `one` and `two` logged the same losses, rollouts and evaluations and ended with the
/// same parameters, up to the order of float sums.
fn assert_same_learning(one: &Path, two: &Path) {
    let (a, b) = (metric_lines(one), metric_lines(two));
    assert_eq!(a.len(), b.len());
    // Relative tolerances: SFT losses measured within 4e-7 of each other, gradient norms within
    // 4e-5 (the parameters drift apart by rounding, see below).
    let close = |x: &Value, y: &Value, tolerance: f64, what: &str| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= tolerance * x.abs().max(1e-3), "{what}: {x} vs {y}");
    };
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["phase"], y["phase"]);
        match x["phase"].as_str().unwrap() {
            // The loss over the whole batch and the gradient norm before clipping: a share
            // normalized by its own tokens instead of the batch's would change both.
            "sft" => {
                close(&x["loss"], &y["loss"], 1e-5, &format!("SFT step {} loss", x["step"]));
                close(&x["grad_norm"], &y["grad_norm"], 1e-3, &format!("SFT step {} gradient norm", x["step"]));
            }
            // The same rollouts (rewards, selection) at every step.
            "rl" => {
                for key in ["reward_mean", "kept_rollouts", "response_length", "finish_reasons"] {
                    assert_eq!(x[key], y[key], "RL step {}: {key}", x["rl_step"]);
                }
                close(&x["loss"], &y["loss"], 1e-5, "RL loss");
            }
            _ => assert_eq!(x["eval"]["per_problem"], y["eval"]["per_problem"], "{}", x["label"]),
        }
    }
    // Summed in another order, the gradients differ by rounding, which AdamW's normalization
    // amplifies where gradients are tiny: measured 0.07-0.34% of the largest parameter change
    // of the run; 2% is allowed.
    let (p1, p2) = (final_params(one), final_params(two));
    let (diff, _) = max_difference(&p1, &p2);
    let config = rstar2_model::Config::from_file(&one.join("model/config.json")).unwrap();
    let (moved, _) = max_difference(&p1, &rstar2_model::Params::random(&config, 1));
    assert!(moved > 1e-3, "training moved the parameters by {moved} only");
    assert!(diff <= 0.02 * moved, "parameters differ by {diff}; training moved them by {moved}");
}

#[test]
fn two_cpu_replicas_learn_what_one_does() {
    let dir = scratch("dp");
    let config = dir.join("dp.toml");
    std::fs::write(&config, DATA_PARALLEL).unwrap();
    let runs = dir.join("runs");
    let (runs_s, config_s) = (runs.to_str().unwrap(), config.to_str().unwrap());
    for (name, device) in [("one", "cpu"), ("two", "cpu,cpu")] {
        let (out, err, ok) = xtask(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", name, "--device", device]);
        assert!(ok, "{device}: {out}\n{err}");
        if name == "two" {
            assert!(out.contains("data parallel: 2 replicas"), "{out}");
        }
    }
    assert_same_learning(&runs.join("one"), &runs.join("two"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CPU and a GPU replica (lavapipe in CI): the first SFT step, before the two devices'
/// different rounding has changed any weight, matches the CPU-only run within the GPU
/// backend's tolerances (those of gpu_run_matches_the_cpu_run_on_the_first_step), and the run
/// completes with both replicas.
#[test]
fn a_cpu_and_gpu_replica_pair_learns_what_the_cpu_does() {
    if rstar2_gpu::test_gpu().is_none() {
        return;
    }
    let dir = scratch("dp-gpu");
    let config = dir.join("mini.toml");
    std::fs::write(&config, MINI).unwrap();
    let runs = dir.join("runs");
    let (runs_s, config_s) = (runs.to_str().unwrap(), config.to_str().unwrap());
    let mut first_step = Vec::new();
    for (name, device) in [("cpu", "cpu"), ("pair", "cpu,gpu:0")] {
        let (out, err, ok) = xtask(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", name, "--device", device]);
        assert!(ok, "{device}: {out}\n{err}");
        first_step.push(first_sft_step(&runs.join(name)));
        if name == "pair" {
            assert!(out.contains("data parallel: 2 replicas"), "{out}");
            assert!(err.contains("device: cpu") && err.contains("device: gpu: "), "{err}");
        }
    }
    let ((cl, cn), (pl, pn)) = (first_step[0], first_step[1]);
    assert!((cl - pl).abs() < 1e-4 * cl && (cn - pn).abs() < 1e-3 * cn, "first SFT step: CPU loss {cl} norm {cn}, CPU + GPU loss {pl} norm {pn}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mpirun -n 2` over TCP on the loopback interface, the ranks given `args` (or each its own
/// after `:`, MPMD style).
#[cfg(feature = "mpi")]
fn mpirun(args: &[&str]) -> (String, String, bool) {
    // `timeout`: a job whose ranks wait for each other forever fails the test instead of hanging it.
    let mut cmd = Command::new("timeout");
    cmd.args(["600", "mpirun", "--oversubscribe", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"]);
    if args.contains(&":") {
        for (i, part) in args.split(|a| *a == ":").enumerate() {
            if i > 0 {
                cmd.arg(":");
            }
            cmd.args(["-n", "1", env!("CARGO_BIN_EXE_xtask")]).args(part);
        }
    } else {
        cmd.args(["-n", "2", env!("CARGO_BIN_EXE_xtask")]).args(args);
    }
    // Open MPI refuses to run as root (CI containers) unless told twice.
    let out = cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").output().expect("mpirun runs (Debian: openmpi-bin)");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned(), out.status.success())
}

#[cfg(feature = "mpi")]
#[test]
fn two_mpi_ranks_learn_what_one_process_does_and_resume() {
    let dir = scratch("mpi");
    let config = dir.join("dp.toml");
    std::fs::write(&config, DATA_PARALLEL).unwrap();
    let runs = dir.join("runs");
    let (runs_s, config_s) = (runs.to_str().unwrap(), config.to_str().unwrap());
    let (out, err, ok) = xtask(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", "one", "--device", "cpu"]);
    assert!(ok, "{out}\n{err}");
    let (out, err, ok) = mpirun(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", "mpi", "--device", "cpu"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("data parallel: 2 replicas (MPI, 2 ranks"), "{out}");
    // Only rank 0 writes: one run folder, one line per step.
    assert!(!runs.join("mpi-2").exists(), "a second rank made its own run folder");
    assert_same_learning(&runs.join("one"), &runs.join("mpi"));

    // Stopped after two RL steps (a stray metrics line as a kill leaves), then resumed by the
    // whole job: the same metrics as the uninterrupted job.
    let (out, err, ok) = mpirun(&["train", "--config", config_s, "--runs-dir", runs_s, "--name", "split", "--device", "cpu", "--stop-after-rl-steps", "2"]);
    assert!(ok, "{out}\n{err}");
    let split = runs.join("split");
    assert!(!split.join("summary.json").exists());
    let mut metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    metrics.push_str("{\"phase\":\"rl\",\"rl_step\":99}\n");
    std::fs::write(split.join("metrics.jsonl"), metrics).unwrap();
    let (out, err, ok) = mpirun(&["train", "--resume", split.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert_same_learning(&runs.join("mpi"), &split);

    // One rank fails on its own after two RL steps: the whole job ends (no rank waits forever)
    // with that rank's message, and resuming it gives the uninterrupted job's metrics.
    let started = std::time::Instant::now();
    let base = ["train", "--config", config_s, "--runs-dir", runs_s, "--name", "failed", "--device", "cpu"];
    let failing: Vec<&str> = base.iter().copied().chain([":"]).chain(base.iter().copied()).chain(["--fail-after-rl-steps", "2"]).collect();
    let (out, err, ok) = mpirun(&failing);
    assert!(!ok, "{out}");
    assert!(err.contains("rank 1: error: injected fault after 2 RL steps"), "{err}");
    // Both MPI tests together took 8.8 s here; without the abort the failing job lasted
    // until `timeout` killed it (60 s in that check): rank 0 waits in its next all-reduce.
    assert!(started.elapsed().as_secs() < 60, "the job took {:?} to end: rank 0 waited for the failed rank", started.elapsed());
    let failed = runs.join("failed");
    assert!(!failed.join("summary.json").exists());
    let (out, err, ok) = mpirun(&["train", "--resume", failed.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert_same_learning(&runs.join("mpi"), &failed);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "mpi")]
#[test]
fn mpi_ranks_with_other_configs_or_a_missing_device_are_refused() {
    let dir = scratch("mpi-bad");
    let config = dir.join("dp.toml");
    std::fs::write(&config, DATA_PARALLEL).unwrap();
    let runs = dir.join("runs");
    let (runs_s, config_s) = (runs.to_str().unwrap(), config.to_str().unwrap());
    let (out, err, ok) = mpirun(&["train", "--config", config_s, "--runs-dir", runs_s, "--seed", "1", ":", "train", "--config", config_s, "--runs-dir", runs_s, "--seed", "2"]);
    assert!(!ok, "{out}");
    assert!(err.contains("rank 1 was given another training config than rank 0: rank 0 has `seed = 1`, rank 1 `seed = 2`"), "{err}");
    let (out, err, ok) = mpirun(&["train", "--config", config_s, "--runs-dir", runs_s, "--device", "cpu", ":", "train", "--config", config_s, "--runs-dir", runs_s, "--device", "gpu:99"]);
    assert!(!ok, "{out}");
    assert!(err.contains("rank 1: opening device \"gpu:99\""), "{err}");
    assert!(!runs.exists(), "a refused job wrote a run folder");
    std::fs::remove_dir_all(&dir).unwrap();
}
