//! `cargo xtask forward --model DIR --tokens 5,17,300 --out FILE.safetensors [--device cpu]`:
//! runs one sequence and writes tensor `logits`, shape [T, vocab], f32.

use std::path::PathBuf;

use anyhow::{Context, bail};
use rstar2_model::{Batch, Config, Model, Params};

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// A Hugging Face model folder (config.json and model.safetensors or a sharded index).
    #[arg(long)]
    pub model: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<u32>,
    /// Output safetensors file with tensor `logits` [T, vocab] f32.
    #[arg(long)]
    pub out: PathBuf,
    /// Backend; only `cpu` exists so far.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn load_model(dir: &std::path::Path) -> anyhow::Result<Model> {
    let config = Config::from_file(&dir.join("config.json"))?;
    let params = Params::load(dir, &config)?;
    Ok(Model::new(config, params))
}

pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    if args.device != "cpu" {
        bail!("--device {:?}: only the cpu backend exists so far", args.device);
    }
    let model = load_model(&args.model)?;
    let v = model.config.vocab_size;
    if let Some(bad) = args.tokens.iter().find(|&&t| t as usize >= v) {
        bail!("token id {bad} is outside the vocabulary (size {v})");
    }
    let fwd = model.forward(&Batch::new(&[args.tokens.clone()]));
    let bytes: Vec<u8> = fwd.logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![args.tokens.len(), v], &bytes)?;
    let data = safetensors::serialize([("logits", view)], None)?;
    rstar2_model::write_atomic(&args.out, &data).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits [{}, {v}] to {}", args.tokens.len(), args.out.display());
    Ok(())
}
