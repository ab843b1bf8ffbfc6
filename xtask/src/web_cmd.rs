//! `cargo xtask web`: builds the page (the `rstar2-web` module for wasm32, its JavaScript glue
//! from the `wasm-bindgen` CLI at the lockfile's version, `crates/web/page`, the tiny preset's
//! config and tokenizer) into `target/web`, and serves it on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use rstar2_train::paths::workspace_root;

/// The browser build's target.
pub const TARGET: &str = "wasm32-unknown-unknown";

#[derive(clap::Args)]
pub struct WebArgs {
    /// Port to serve on (127.0.0.1 only: WebGPU needs a secure context, which localhost is).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Build the module in the dev profile (faster to build, slower to run).
    #[arg(long)]
    pub dev: bool,
    /// Build target/web and stop, without serving it.
    #[arg(long)]
    pub build_only: bool,
}

pub fn run(args: WebArgs) -> anyhow::Result<()> {
    let out = build(args.dev)?;
    if args.build_only {
        return Ok(());
    }
    serve(&out, args.port)
}

/// Builds the page into `target/web` (the module in the dev profile where `dev`); returns it.
pub fn build(dev: bool) -> anyhow::Result<std::path::PathBuf> {
    let root = workspace_root();
    ensure_target()?;
    let tools = ensure_runner()?;
    let profile = if dev { "debug" } else { "release" };
    eprintln!("building rstar2-web for wasm32 ({profile}; the first build compiles RustPython for wasm32, about 10 minutes on two cores)");
    let mut build = crate::cargo();
    build.args(["build", "--ignore-rust-version", "--target", TARGET, "-p", "rstar2-web", "--lib"]);
    if !dev {
        build.arg("--release");
    }
    if !build.status().context("running cargo build")?.success() {
        bail!("building rstar2-web for wasm32 failed");
    }
    let out = root.join("target").join("web");
    let module = root.join("target/wasm32-unknown-unknown").join(profile).join("rstar2_web.wasm");
    let status = Command::new(tools.join("wasm-bindgen")).args(["--target", "web", "--no-typescript", "--out-dir"]).arg(out.join("pkg")).arg(&module).status().context("running wasm-bindgen")?;
    if !status.success() {
        bail!("wasm-bindgen failed on {}", module.display());
    }
    for entry in std::fs::read_dir(root.join("crates/web/page")).context("reading crates/web/page")? {
        let from = entry?.path();
        std::fs::copy(&from, out.join(from.file_name().expect("a file"))).with_context(|| format!("copying {}", from.display()))?;
    }
    std::fs::create_dir_all(out.join("model"))?;
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(root.join("models/tiny").join(file), out.join("model").join(file)).with_context(|| format!("copying models/tiny/{file}"))?;
    }
    let (bytes, gzipped) = sizes(&out)?;
    println!("page in {}: {:.1} MB, {:.1} MB gzipped", out.display(), bytes as f64 / 1e6, gzipped as f64 / 1e6);
    Ok(out)
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
        let status = crate::cargo().args(["install", "--quiet", "wasm-bindgen-cli", "--version", &version, "--root"]).arg(&root).status().context("running cargo install wasm-bindgen-cli")?;
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

/// Bytes of every file of the page, as served and gzipped.
fn sizes(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut gzipped) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            let (b, g) = sizes(&path)?;
            bytes += b;
            gzipped += g;
            continue;
        }
        let data = std::fs::read(&path)?;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut encoder, &data)?;
        bytes += data.len() as u64;
        gzipped += encoder.finish()?.len() as u64;
    }
    Ok((bytes, gzipped))
}

/// Serves `dir` on 127.0.0.1:`port` until interrupted.
pub fn serve(dir: &Path, port: u16) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        println!("serving http://127.0.0.1:{port}/ (Ctrl-C stops); in Chromium, WebGPU may need --enable-unsafe-webgpu");
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let dir = dir.clone();
            async move { file(&dir, uri.path()) }
        });
        axum::serve(listener, app).await.context("serving HTTP")
    })
}

/// A file of the page by URL path, with the content type browsers insist on for modules.
fn file(dir: &Path, path: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "index.html" } else { relative };
    if relative.split('/').any(|part| part == ".." || part.is_empty()) {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    }
    let Ok(data) = std::fs::read(dir.join(relative)) else { return axum::http::StatusCode::NOT_FOUND.into_response() };
    let kind = match Path::new(relative).extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    ([(axum::http::header::CONTENT_TYPE, kind)], data).into_response()
}
