//! `cargo xtask web`: builds the page (the `rstar2-web` module for wasm32, its JavaScript glue
//! from the `wasm-bindgen` CLI at the lockfile's version, `crates/web/page`, the tiny preset's
//! config and tokenizer) into `target/web`, and serves it on 127.0.0.1.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use rstar2_train::paths::workspace_root;

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
    let root = workspace_root();
    crate::web_tests::ensure_target()?;
    let tools = crate::web_tests::ensure_runner()?;
    let profile = if args.dev { "debug" } else { "release" };
    eprintln!("building rstar2-web for wasm32 ({profile}; the first build compiles RustPython for wasm32, about 10 minutes on two cores)");
    let mut build = crate::test_cmd::cargo();
    build.args(["build", "--ignore-rust-version", "--target", "wasm32-unknown-unknown", "-p", "rstar2-web", "--lib"]);
    if !args.dev {
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
    for file in ["index.html", "main.js"] {
        std::fs::copy(root.join("crates/web/page").join(file), out.join(file)).with_context(|| format!("copying {file}"))?;
    }
    std::fs::create_dir_all(out.join("model"))?;
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(root.join("models/tiny").join(file), out.join("model").join(file)).with_context(|| format!("copying models/tiny/{file}"))?;
    }
    let (bytes, gzipped) = sizes(&out)?;
    println!("page in {}: {:.1} MB, {:.1} MB gzipped", out.display(), bytes as f64 / 1e6, gzipped as f64 / 1e6);
    if args.build_only {
        return Ok(());
    }
    serve(&out, args.port)
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
fn serve(dir: &Path, port: u16) -> anyhow::Result<()> {
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
