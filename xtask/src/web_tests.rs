//! The browser half of `cargo xtask test`: `crates/web`'s tests built for wasm32 and run in
//! headless Chromium with WebGPU (SwiftShader, no GPU needed) through `wasm-bindgen-test-runner`.
//! Sets up what it can itself (the rustup target, the runner at the lockfile's version); the
//! browser comes from the system (`apt-get install chromium chromium-driver`). Anything missing
//! is said loudly, and fails under `CI`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use rstar2_train::paths::workspace_root;

use crate::web_cmd::TARGET;
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium's switches: WebGPU on the CPU (`--enable-unsafe-webgpu` exposes SwiftShader), and
/// nothing that reaches for the network (none here).
const CHROME_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
];

/// Runs `crates/web`'s tests in Chromium, or says why it cannot (an error under `CI`).
pub fn run() -> anyhow::Result<()> {
    if let Err(missing) = prerequisites() {
        eprintln!("\n*** browser tests NOT run: {missing} ***\n");
        if std::env::var_os("CI").is_some() {
            bail!("CI is set and the browser tests cannot run: {missing}");
        }
        return Ok(());
    }
    let runner_dir = crate::web_cmd::ensure_runner()?;
    let root = workspace_root();
    let capabilities = root.join("target").join("webdriver.json");
    let args: Vec<String> = CHROME_ARGS.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(&capabilities, format!("{{\"goog:chromeOptions\":{{\"binary\":\"{CHROMIUM}\",\"args\":[{}]}}}}\n", args.join(",")))?;
    let path = std::env::join_paths(std::iter::once(runner_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))?;
    let status = crate::cargo()
        .args(["test", "--ignore-rust-version", "--target", TARGET, "-p", "rstar2-web"])
        .env("PATH", path)
        .env("CHROMEDRIVER", CHROMEDRIVER)
        .env("WASM_BINDGEN_TEST_WEBDRIVER_JSON", &capabilities)
        // SwiftShader runs WGSL at a fraction of a GFLOP/s: the default 20 s is too short.
        .env("WASM_BINDGEN_TEST_TIMEOUT", "600")
        .status()
        .context("running cargo test --target wasm32-unknown-unknown")?;
    if !status.success() {
        bail!("browser tests failed");
    }
    page_test(&capabilities)
}

/// The page as a user meets it: `cargo xtask web --dev` builds it, a server serves it, and over
/// WebDriver a headless Chromium loads it, runs Python calls (one that escapes its deadline and
/// takes its worker down with it), measures the matmul kernel, starts a toy run and reads its steps' figures from the page.
fn page_test(capabilities: &Path) -> anyhow::Result<()> {
    eprintln!("page test: building the page (dev profile), serving it, driving Chromium over WebDriver");
    // In this process: `cargo test --workspace` has rebuilt (replaced) this very binary.
    let page = crate::web_cmd::build(true)?;
    let port = free_port()?;
    std::thread::spawn(move || crate::web_cmd::serve(&page, port));
    let driver_port = free_port()?;
    let driver = Child(Command::new(CHROMEDRIVER).arg(format!("--port={driver_port}")).stdout(std::process::Stdio::null()).spawn().context("starting chromedriver")?);
    let result = drive(driver_port, port, capabilities);
    drop(driver);
    result
}

/// Kills the process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn drive(driver_port: u16, page_port: u16, capabilities: &Path) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{driver_port}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| -> anyhow::Result<serde_json::Value> {
        let url = format!("{base}{path}");
        let response = match body {
            Some(b) => agent.post(&url).header("content-type", "application/json").send(b.to_string()),
            None if method == "DELETE" => agent.delete(&url).call(),
            None => agent.get(&url).call(),
        };
        let text = response.with_context(|| format!("WebDriver {url}"))?.body_mut().read_to_string()?;
        let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("WebDriver {url}: {text}"))?;
        if value["value"].get("error").is_some() {
            bail!("WebDriver {url}: {}", value["value"]);
        }
        Ok(value["value"].clone())
    };
    let started = std::time::Instant::now();
    let session = loop {
        match call("POST", "/session", Some(serde_json::json!({"capabilities": {"alwaysMatch": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(capabilities)?)?}}))) {
            Ok(s) => break s["sessionId"].as_str().context("no session id")?.to_string(),
            Err(e) if started.elapsed().as_secs() < 20 => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    };
    let script = |code: &str| call("POST", &format!("/session/{session}/execute/sync"), Some(serde_json::json!({"script": code, "args": []})));
    let text = |id: &str| script(&format!("return document.getElementById('{id}').textContent")).map(|v| v.as_str().unwrap_or_default().to_string());
    let wait = |id: &str, what: &str, done: &dyn Fn(&str) -> bool, seconds: u64| -> anyhow::Result<String> {
        let start = std::time::Instant::now();
        loop {
            let t = text(id)?;
            if done(&t) {
                return Ok(t);
            }
            if start.elapsed().as_secs() > seconds {
                bail!("page test: {what} did not happen within {seconds} s (#{id}: {t:?})");
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    let outcome = (|| -> anyhow::Result<()> {
        // The server may still be starting.
        for _ in 0..80 {
            if call("POST", &format!("/session/{session}/url"), Some(serde_json::json!({"url": format!("http://127.0.0.1:{page_port}/")}))).is_ok() && text("backend").is_ok_and(|t| !t.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        wait("progress", "loading the module", &|t| t.starts_with("ready"), 120)?;
        // SwiftShader is software: "auto" trains on the CPU backend and names the adapter.
        let backend = text("backend")?;
        if !backend.contains("the WebGPU adapter here") || !backend.contains("is software") {
            bail!("page test: the page found no (software) WebGPU adapter ({backend:?})");
        }
        let python = |code: &str, seconds: u64| -> anyhow::Result<String> {
            script(&format!("document.getElementById('tool').textContent = ''; document.getElementById('code').value = {code:?}; document.getElementById('run').click()"))?;
            wait("tool", "the Python call", &|t| t.starts_with('['), seconds)
        };
        let answer = python("print(6 * 7)", 60)?;
        if answer != "[ok]\n42\n" {
            bail!("page test: the Python tool answered {answer:?}");
        }
        // Code that catches its deadline's interrupt and loops on escapes the interpreter's own
        // checks: past the deadline (4 s) and its grace, the page ends the tool's worker, and a
        // fresh worker answers the next call.
        let answer = python("while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n        pass", 30)?;
        if !answer.starts_with("[timeout]") || !answer.contains("worker was ended and replaced") {
            bail!("page test: a call that escapes its deadline answered {answer:?}");
        }
        let answer = python("print(6 * 7)", 60)?;
        if answer != "[ok]\n42\n" {
            bail!("page test: the replaced Python worker answered {answer:?}");
        }
        // The matmul kernel beside the CPU backend, at a size SwiftShader does quickly.
        script("document.getElementById('size').value = '64'; document.getElementById('measure').click()")?;
        let bench = wait("bench", "the matmul measurement", &|t| t.contains("largest difference") || t.contains("failed"), 120)?;
        let diff: Option<f64> = bench.rsplit(' ').next().and_then(|d| d.parse().ok());
        if !bench.contains("WebGPU (") || !bench.contains("GFLOP/s") || !diff.is_some_and(|d| d < 1e-4) {
            bail!("page test: the matmul measurement reads {bench:?}");
        }
        let settings =
            serde_json::json!({"sft_examples": 8, "sft_epochs": 1, "sft_batch": 4, "rl_steps": 1, "prompts_per_step": 1, "group_size": 2, "oversample": 1, "max_response_tokens": 16, "levels": [1]});
        // "auto": the CPU backend here (the tiny preset's steps take tens of seconds on SwiftShader).
        script(&format!("document.getElementById('settings').value = {:?}; document.getElementById('device').value = 'auto'; document.getElementById('start').click()", settings.to_string()))?;
        wait("progress", "the toy run", &|t| t.contains("(done)") || t.contains("failed"), 600)?;
        let log = text("log")?;
        let sft: Vec<f64> = log.lines().filter_map(|l| l.split("sft loss ").nth(1)).filter_map(|r| r.split_whitespace().next()?.parse().ok()).collect();
        if sft.len() != 2 || !log.contains("step 3/3 rl reward") || sft.iter().any(|l| !(0.0..20.0).contains(l)) {
            bail!("page test: the run's steps are not on the page as expected:\n{log}");
        }
        let trained_on = text("backend")?;
        if !trained_on.starts_with("CPU (WebAssembly") {
            bail!("page test: \"auto\" with a software adapter trained on {trained_on:?}");
        }
        eprintln!("page test: ok ({backend}; SFT losses {sft:?}, then one GRPO-RoC step)");
        Ok(())
    })();
    let _ = call("DELETE", &format!("/session/{session}"), None);
    outcome
}

/// What the system must provide: the browser and its driver.
fn prerequisites() -> Result<(), String> {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(path).exists() {
            return Err(format!("no {path} (apt-get install {package})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lockfile_pins_one_wasm_bindgen_and_the_web_crate_asks_for_it() {
        let version = crate::web_cmd::locked_version("wasm-bindgen").unwrap();
        let manifest = std::fs::read_to_string(super::workspace_root().join("crates/web/Cargo.toml")).unwrap();
        assert!(manifest.contains(&format!("wasm-bindgen = \"={version}\"")), "crates/web/Cargo.toml must pin wasm-bindgen to the lockfile's {version}");
        assert!(crate::web_cmd::locked_version("no-such-package").is_err());
    }
}
