//! The browser half of `cargo xtask test`: `crates/web`'s tests built for wasm32 and run in
//! headless Chromium with WebGPU (SwiftShader, no GPU needed) through `wasm-bindgen-test-runner`.
//! Sets up what it can itself (the rustup target, the runner at the lockfile's version); the
//! browser comes from the system (`apt-get install chromium chromium-driver`). Anything missing
//! is said loudly, and fails under `CI`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use rstar2_train::paths::workspace_root;

const TARGET: &str = "wasm32-unknown-unknown";
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
pub fn run(cargo: impl Fn() -> Command) -> anyhow::Result<()> {
    if let Err(missing) = prerequisites() {
        eprintln!("\n*** browser tests NOT run: {missing} ***\n");
        if std::env::var_os("CI").is_some() {
            bail!("CI is set and the browser tests cannot run: {missing}");
        }
        return Ok(());
    }
    let runner_dir = ensure_runner()?;
    let root = workspace_root();
    let capabilities = root.join("target").join("webdriver.json");
    let args: Vec<String> = CHROME_ARGS.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(&capabilities, format!("{{\"goog:chromeOptions\":{{\"binary\":\"{CHROMIUM}\",\"args\":[{}]}}}}\n", args.join(",")))?;
    let path = std::env::join_paths(std::iter::once(runner_dir.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))?;
    let status = cargo()
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
    page_test(&runner_dir, &capabilities)
}

/// The page as a user meets it: `cargo xtask web --dev` builds it, a server serves it, and over
/// WebDriver a headless Chromium loads it, runs a Python call, starts a toy run and reads its
/// first steps' figures from the page.
fn page_test(runner_dir: &Path, capabilities: &Path) -> anyhow::Result<()> {
    eprintln!("page test: building the page (dev profile), serving it, driving Chromium over WebDriver");
    let port = free_port()?;
    let xtask = std::env::current_exe()?;
    let path = std::env::join_paths(std::iter::once(runner_dir.to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))?;
    let build = Command::new(&xtask).args(["web", "--dev", "--build-only"]).env("PATH", &path).status().context("running cargo xtask web --build-only")?;
    if !build.success() {
        bail!("cargo xtask web --dev --build-only failed");
    }
    let server = Child(Command::new(&xtask).args(["web", "--dev", "--port", &port.to_string()]).env("PATH", &path).spawn().context("starting cargo xtask web")?);
    let driver_port = free_port()?;
    let driver = Child(Command::new(CHROMEDRIVER).arg(format!("--port={driver_port}")).stdout(std::process::Stdio::null()).spawn().context("starting chromedriver")?);
    let result = drive(driver_port, port, capabilities);
    drop((server, driver));
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
        wait("progress", "loading the module", &|t| t == "ready", 120)?;
        let backend = text("backend")?;
        if !backend.starts_with("WebGPU") {
            bail!("page test: the page found no WebGPU ({backend:?})");
        }
        script("document.getElementById('code').value = 'print(6 * 7)'; document.getElementById('run').click()")?;
        let tool = wait("tool", "the Python call", &|t| !t.is_empty(), 30)?;
        if tool != "[ok]\n42\n" {
            bail!("page test: the Python tool answered {tool:?}");
        }
        let settings =
            serde_json::json!({"sft_examples": 8, "sft_epochs": 1, "sft_batch": 4, "rl_steps": 1, "prompts_per_step": 1, "group_size": 2, "oversample": 1, "max_response_tokens": 16, "levels": [1]});
        // The CPU backend: the tiny preset's steps take tens of seconds each on SwiftShader.
        script(&format!("document.getElementById('settings').value = {:?}; document.getElementById('cpu').checked = true; document.getElementById('start').click()", settings.to_string()))?;
        wait("progress", "the toy run", &|t| t.contains("(done)") || t.contains("failed"), 600)?;
        let log = text("log")?;
        let sft: Vec<f64> = log.lines().filter_map(|l| l.split("sft loss ").nth(1)).filter_map(|r| r.split_whitespace().next()?.parse().ok()).collect();
        if sft.len() != 2 || !log.contains("step 3/3 rl reward") || sft.iter().any(|l| !(0.0..20.0).contains(l)) {
            bail!("page test: the run's steps are not on the page as expected:\n{log}");
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

/// Adds the wasm32 target with rustup when it is missing (the browser build's clippy and tests
/// need it).
pub fn ensure_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output().context("running rustup (the wasm32 target comes from rustup)")?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == TARGET) {
        eprintln!("adding the {TARGET} target with rustup");
        let added = Command::new("rustup").args(["target", "add", TARGET]).status().with_context(|| format!("running rustup target add {TARGET}"))?;
        if !added.success() {
            bail!("rustup target add {TARGET} failed");
        }
    }
    Ok(())
}

/// The folder holding `wasm-bindgen-test-runner` of exactly the lockfile's `wasm-bindgen`
/// version (the runner refuses modules of another version): one on PATH if it matches, else
/// installed once from crates.io into `target/wasm-bindgen-cli`.
pub fn ensure_runner() -> anyhow::Result<PathBuf> {
    let version = locked_version("wasm-bindgen")?;
    let matches = |runner: &Path| Command::new(runner).arg("--version").output().is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w == version));
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if matches(&dir.join("wasm-bindgen-test-runner")) {
            return Ok(dir);
        }
    }
    let root = workspace_root().join("target").join("wasm-bindgen-cli");
    let bin = root.join("bin");
    if !matches(&bin.join("wasm-bindgen-test-runner")) {
        eprintln!("installing wasm-bindgen-cli {version} (the lockfile's wasm-bindgen) into {}", root.display());
        // Not `--locked`: the CLI's own lockfile pins a release that crates.io no longer has.
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "--quiet", "wasm-bindgen-cli", "--version", &version, "--root"])
            .arg(&root)
            .status()
            .context("running cargo install wasm-bindgen-cli")?;
        if !status.success() || !matches(&bin.join("wasm-bindgen-test-runner")) {
            bail!("installing wasm-bindgen-cli {version} failed");
        }
    }
    Ok(bin)
}

/// The version of `package` in Cargo.lock.
pub fn locked_version(package: &str) -> anyhow::Result<String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"")
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_string());
        }
    }
    bail!("{package} is not in Cargo.lock")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lockfile_pins_one_wasm_bindgen_and_the_web_crate_asks_for_it() {
        let version = super::locked_version("wasm-bindgen").unwrap();
        let manifest = std::fs::read_to_string(super::workspace_root().join("crates/web/Cargo.toml")).unwrap();
        assert!(manifest.contains(&format!("wasm-bindgen = \"={version}\"")), "crates/web/Cargo.toml must pin wasm-bindgen to the lockfile's {version}");
        assert!(super::locked_version("no-such-package").is_err());
    }
}
