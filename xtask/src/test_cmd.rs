//! `cargo xtask test`: fetch what the tests need, then `cargo test` over the workspace.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::cargo;

/// Pure-Python packages the sandbox tests import from a read-only folder.
const WHEELS: &[&str] = &["sympy==1.14.0", "mpmath==1.3.0"];

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments passed to `cargo test` (after `--`, e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
    /// Skip the checks run before the tests (rustfmt, clippy with warnings as errors, the
    /// CPU-only build without wgpu); CI never skips them.
    #[arg(long)]
    pub no_lints: bool,
}

pub use rstar2_train::paths::{has_pylib, pylib_dir, workspace_root};

/// Downloads the wheels with pip (once) and unpacks them into `target/pylib`.
pub fn ensure_pylib() -> anyhow::Result<PathBuf> {
    let dir = pylib_dir();
    if has_pylib(&dir) {
        return Ok(dir);
    }
    let wheels = workspace_root().join("target").join("pylib-wheels");
    std::fs::create_dir_all(&wheels)?;
    eprintln!("fetching {} with pip into {}", WHEELS.join(", "), wheels.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d"])
        .arg(&wheels)
        .args(WHEELS)
        .status()
        .context("running python3 -m pip (Python 3 with pip is needed to fetch sympy for the tests)")?;
    if !status.success() {
        bail!("pip download of {} failed", WHEELS.join(", "));
    }
    let unpack = "import sys, zipfile, glob\nfor w in glob.glob(sys.argv[1] + '/*.whl'):\n    zipfile.ZipFile(w).extractall(sys.argv[2])\n";
    let status = Command::new("python3").args(["-c", unpack]).arg(&wheels).arg(&dir).status()?;
    if !status.success() {
        bail!("unpacking the wheels into {} failed", dir.display());
    }
    Ok(dir)
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    // A full disk shows up as a linker killed by SIGBUS or a truncated file, far from its cause:
    // say how much room there was before and after.
    print_disk_room("before the suite");
    let result = run_suite(args);
    if result.is_err() {
        print_disk_room("after the failure");
    }
    result
}

/// The free space where `target/` lives, as `df -h` prints it (nothing where df is missing).
fn print_disk_room(when: &str) {
    let target = workspace_root().join("target");
    let probe = if target.exists() { target } else { workspace_root() };
    if let Ok(out) = Command::new("df").arg("-h").arg(&probe).output()
        && let Some(line) = String::from_utf8_lossy(&out.stdout).lines().nth(1)
    {
        eprintln!("disk room {when} (df -h {}): {line}", probe.display());
    }
}

fn run_suite(args: TestArgs) -> anyhow::Result<()> {
    if !rstar2_train::paths::is_checkout(&workspace_root()) {
        bail!("cargo xtask test runs the suite of an rstar2 checkout: run it inside one (found none above {})", std::env::current_dir()?.display());
    }
    let mpi = mpi_available();
    // The MPI tests (`mpirun -n 2` training) need Open MPI; without it they are left out, loudly,
    // and CI fails.
    if !mpi {
        eprintln!("\n*** MPI tests NOT run: no Open MPI here (apt-get install openmpi-bin libopenmpi-dev libclang-dev) ***\n");
        if std::env::var_os("CI").is_some() {
            bail!("CI is set and Open MPI is missing: the MPI tests must run in CI");
        }
    }
    let mpi_features: &[&str] = if mpi { &["--features", "xtask/mpi"] } else { &[] };
    if args.no_lints {
        if std::env::var_os("CI").is_some() {
            bail!("CI is set: the lints are part of the test command there");
        }
    } else {
        lints(mpi_features)?;
    }
    let pylib = ensure_pylib()?;
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--ignore-rust-version", "--workspace"]).args(mpi_features);
    cmd.args(&args.cargo_args).env("RSTAR2_TEST_PYLIB", &pylib);
    // Mesa's software Vulkan (lavapipe), which runs the GPU tests on machines without a GPU,
    // complains on stderr when this is unset; a private folder silences it.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let runtime = workspace_root().join("target").join("xdg-runtime");
        std::fs::create_dir_all(&runtime)?;
        cmd.env("XDG_RUNTIME_DIR", runtime);
    }
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    // The browser tests only where no filter narrows the native run to something else.
    if args.cargo_args.is_empty() {
        crate::web_cmd::ensure_target()?;
        crate::web_tests::run()?;
    }
    Ok(())
}

/// Runs `cmd` (a check before the tests), failing with `what` if it does not pass.
fn check(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    eprintln!("check: {what}");
    if !cmd.status().with_context(|| format!("running {what}"))?.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// What CI keeps before any test runs: the code as rustfmt writes it, no clippy warning in any
/// target (MPI code included where Open MPI is installed), and a CPU-only build (`xtask`
/// without its default `gpu` feature) that compiles, lint-free, without wgpu in its graph.
fn lints(mpi_features: &[&str]) -> anyhow::Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    check(fmt, "cargo fmt --all --check (run `cargo fmt --all` to fix)")?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--release", "--ignore-rust-version", "--workspace", "--all-targets"]).args(mpi_features).args(["--", "-D", "warnings"]);
    check(clippy, "cargo clippy --workspace --all-targets -- -D warnings")?;
    let mut cpu_only = cargo();
    cpu_only.args(["clippy", "--release", "--ignore-rust-version", "-p", "xtask", "--no-default-features", "--", "-D", "warnings"]);
    check(cpu_only, "cargo clippy -p xtask --no-default-features -- -D warnings (the CPU-only build)")?;
    let mut cpu_only_tests = cargo();
    cpu_only_tests.args(["test", "--release", "--ignore-rust-version", "-p", "rstar2-backend", "--no-default-features"]);
    check(cpu_only_tests, "cargo test -p rstar2-backend --no-default-features (device choice without a GPU backend)")?;
    crate::web_cmd::ensure_target()?;
    let mut wasm = cargo();
    wasm.args(["clippy", "--ignore-rust-version", "--target", "wasm32-unknown-unknown", "-p", "rstar2-web", "--all-targets", "--", "-D", "warnings"]);
    check(wasm, "cargo clippy -p rstar2-web --target wasm32-unknown-unknown -- -D warnings (the browser build)")?;
    let tree = cargo().args(["tree", "-p", "xtask", "--no-default-features", "-e", "normal", "--prefix", "none"]).output().context("running cargo tree")?;
    if !tree.status.success() {
        bail!("cargo tree -p xtask --no-default-features failed: {}", String::from_utf8_lossy(&tree.stderr));
    }
    if let Some(line) = String::from_utf8_lossy(&tree.stdout).lines().find(|l| l.starts_with("wgpu ")) {
        bail!("the CPU-only build (xtask --no-default-features) depends on wgpu again: {line}");
    }
    Ok(())
}

/// Whether an MPI compiler wrapper and launcher are installed (rsmpi builds against the first,
/// the tests start jobs with the second).
fn mpi_available() -> bool {
    let runs = |program: &str| Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    runs("mpicc") && runs("mpirun")
}
