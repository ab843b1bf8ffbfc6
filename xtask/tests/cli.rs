//! The command-line formats other tools rely on, run as a user would.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn xtask(args: &[&str], stdin: &str) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("xtask runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.success())
}

#[test]
fn sandbox_exec_prints_one_json_object() {
    let (out, err, ok) = xtask(&["sandbox", "exec"], "import math\nprint(math.comb(10, 3))\n");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["elapsed_us", "status", "stderr", "stdout"]);
    assert_eq!((v["status"].as_str(), v["stdout"].as_str(), v["stderr"].as_str()), (Some("ok"), Some("120\n"), Some("")));
    assert!(v["elapsed_us"].as_u64().unwrap() > 0);

    let (out, _, _) = xtask(&["sandbox", "exec", "--stdin", "20 22", "--timeout-ms", "500"], "a, b = map(int, input().split())\nprint(a + b)");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["stdout"], "42\n");
    let (out, _, _) = xtask(&["sandbox", "exec", "--timeout-ms", "300"], "while True:\n    pass");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "timeout");
}

#[test]
fn sandbox_batch_answers_every_line_in_order() {
    let dir = std::env::temp_dir().join(format!("rstar2-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    std::fs::write(
        &input,
        [r#"{"id": "a", "code": "print(6 * 7)"}"#, r#"{"id": 2, "code": "print(input()[::-1])", "stdin": "abc"}"#, r#"this is not json"#, r#"{"id": "no-code"}"#, r#"{"id": "err", "code": "1/0"}"#]
            .join("\n"),
    )
    .unwrap();
    // In-process by default; the same answers in worker processes.
    for (isolation, pool) in [(None, "(2 in-process interpreters)"), (Some("process"), "(2 process interpreters)")] {
        let mut args = vec!["sandbox", "batch", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--workers", "2"];
        args.extend(isolation.iter().flat_map(|i| ["--isolation", *i]));
        let (_, err, ok) = xtask(&args, "");
        assert!(ok, "{err}");
        assert!(err.contains(pool), "{err}");
        check_batch_output(&output);
    }
    let (_, err, ok) = xtask(&["sandbox", "batch", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--isolation", "container"], "");
    assert!(!ok && err.contains("expected in-process or process"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn check_batch_output(output: &std::path::Path) {
    let lines: Vec<Value> = std::fs::read_to_string(output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!((&lines[0]["id"], &lines[0]["stdout"], &lines[0]["status"]), (&Value::from("a"), &Value::from("42\n"), &Value::from("ok")));
    assert_eq!((&lines[1]["id"], &lines[1]["stdout"]), (&Value::from(2), &Value::from("cba\n")));
    assert_eq!((&lines[2]["id"], &lines[2]["status"]), (&Value::Null, &Value::from("invalid_input")));
    assert_eq!((&lines[3]["id"], &lines[3]["status"]), (&Value::from("no-code"), &Value::from("invalid_input")));
    assert_eq!(lines[4]["status"], "error");
    assert!(lines[4]["stderr"].as_str().unwrap().ends_with("ZeroDivisionError: division by zero\n"));
}

/// A batch killed with SIGKILL part-way keeps every result it had written; `--resume` runs only
/// the rest, and the finished file holds every result exactly once, in input order. A deeply
/// nested line in the batch is answered like any other.
#[test]
fn sandbox_batch_killed_mid_batch_resumes_every_result_exactly_once() {
    let dir = std::env::temp_dir().join(format!("rstar2-batch-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let n = 240;
    let mut lines: Vec<String> = (0..n).map(|i| format!(r#"{{"id": {i}, "code": "import time\ntime.sleep(0.02)\nprint({i} * {i})"}}"#)).collect();
    lines[7] = r#"{"id": 7, "code": "exec('-' * 2000000 + '1')"}"#.to_string();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let args = ["sandbox", "batch", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--workers", "2"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let written = |path: &std::path::Path| std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    let start = std::time::Instant::now();
    while written(&output) < 20 && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = written(&output);
    assert!((20..n).contains(&before), "{before} results written before the kill");
    let (_, err, ok) = xtask(&[&args[..], &["--resume"]].concat(), "");
    assert!(ok, "{err}");
    assert!(err.contains("already answered"), "{err}");
    let results: Vec<Value> = std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<u64> = results.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>(), "every id once, in input order");
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(r["status"], "error");
            assert!(r["stderr"].as_str().unwrap().contains("RecursionError"), "{r}");
        } else {
            assert_eq!(r["stdout"], format!("{}\n", i * i), "{r}");
        }
    }
    // --resume needs ids to match results by.
    std::fs::write(&input, "{\"code\": \"print(1)\"}\n").unwrap();
    let (_, err, ok) = xtask(&[&args[..], &["--resume"]].concat(), "");
    assert!(!ok && err.contains("has none"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verify_prints_reward_and_extracted() {
    let dir = std::env::temp_dir().join(format!("rstar2-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"id": 1, "response": "<answer>\\boxed{\\frac{1}{2}}</answer>", "answer": "0.5"}"#,
            r#"{"id": 2, "response": "<answer>\\boxed{\\pm 2021}</answer>", "answer": "2021"}"#,
            r#"{"id": 3, "response": "no answer here", "answer": 7}"#,
            r#"{"id": 4, "response": "missing answer field"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (out, err, ok) = xtask(&["verify", "--input", input.to_str().unwrap()], "");
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], serde_json::json!({"id": 1, "reward": 1, "extracted": "\\frac{1}{2}"}));
    assert_eq!(lines[1], serde_json::json!({"id": 2, "reward": 0, "extracted": "\\pm 2021"}));
    assert_eq!(lines[2], serde_json::json!({"id": 3, "reward": 0, "extracted": null}));
    assert_eq!((&lines[3]["id"], &lines[3]["reward"]), (&Value::from(4), &Value::from(0)));
    assert!(lines[3]["error"].is_string());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `forward --device gpu:0` (any adapter; lavapipe in CI) writes the CPU backend's logits within
/// float tolerance; `devices` lists the CPU and the adapters; a bad device string is refused.
#[test]
fn forward_on_a_gpu_matches_the_cpu_and_devices_lists_adapters() {
    if rstar2_gpu::test_gpu().is_none() {
        return;
    }
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen3-untied");
    let dir = std::env::temp_dir().join(format!("rstar2-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut logits = Vec::new();
    for device in ["cpu", "gpu:0"] {
        let out = dir.join(format!("{device}.safetensors"));
        let (_, err, ok) = xtask(&["forward", "--model", model.to_str().unwrap(), "--tokens", "5,17,3,90,44", "--out", out.to_str().unwrap(), "--device", device], "");
        assert!(ok, "{device}: {err}");
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("logits").unwrap();
        assert_eq!(t.shape()[0], 5);
        logits.push(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<f32>>());
    }
    let scale = logits[0].iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let diff = logits[0].iter().zip(&logits[1]).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-5 * scale, "GPU logits differ from the CPU's by {diff}");
    let (out, _, ok) = xtask(&["devices"], "");
    assert!(ok && out.contains("cpu ") && out.contains("gpu:0 ") && out.contains("--device auto picks"), "{out}");
    let (_, err, ok) = xtask(&["forward", "--model", model.to_str().unwrap(), "--tokens", "5", "--out", "/dev/null", "--device", "tpu"], "");
    assert!(!ok && err.contains("expected auto, cpu, gpu or gpu:N"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Paths are found at run time: the binary copied out of this checkout and run inside another
/// one writes into that one (walking up from a subfolder), and outside any checkout into
/// `RSTAR2_HOME`, which gets the built-in configs.
#[test]
fn a_moved_binary_writes_into_the_checkout_it_runs_in() {
    let dir = std::env::temp_dir().join(format!("rstar2-moved-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (bin, other, home, outside) = (dir.join("bin"), dir.join("other-checkout"), dir.join("home"), dir.join("outside"));
    for d in [&bin, &other.join("deep/sub"), &other.join("models/tiny"), &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    let this = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(other.join("Cargo.toml"), "[package]\nname = \"rstar2\"\n").unwrap();
    std::fs::copy(this.join("models/tiny/config.json"), other.join("models/tiny/config.json")).unwrap();
    let xtask = bin.join("xtask");
    std::fs::copy(env!("CARGO_BIN_EXE_xtask"), &xtask).unwrap();
    // This checkout's tokenizer is what the binary was built beside: it must not be written
    // (and is put back if it was, so a regression cannot break the other tests).
    let ours = this.join("models/tiny/tokenizer.json");
    let before = std::fs::read(&ours).unwrap();

    for (cwd, expected_root) in [(other.join("deep/sub"), &other), (outside.clone(), &home)] {
        let out = Command::new(&xtask).args(["train-tokenizer", "--vocab", "300", "--traces", "40"]).current_dir(&cwd).env("RSTAR2_HOME", &home).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let written = expected_root.join("models/tiny/tokenizer.json");
        let untouched = std::fs::read(&ours).unwrap() == before;
        if !untouched {
            std::fs::write(&ours, &before).unwrap();
        }
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(untouched, "the binary wrote into the checkout it was built in: {stdout}");
        assert!(stdout.contains(&format!("wrote {} (300 tokens)", written.display())), "{stdout}");
        let config: Value = serde_json::from_str(&std::fs::read_to_string(expected_root.join("models/tiny/config.json")).unwrap()).unwrap();
        assert_eq!(config["vocab_size"], 300);
    }
    assert!(!other.join("configs").exists(), "a checkout is used as it is");
    assert!(home.join("configs/tiny.toml").is_file(), "a home gets the built-in configs");
    std::fs::remove_dir_all(&dir).unwrap();
}
