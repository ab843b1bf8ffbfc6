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
    let path = std::env::join_paths(std::iter::once(runner_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))?;
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
    Ok(())
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
fn ensure_runner() -> anyhow::Result<PathBuf> {
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
