//! `cargo xtask forward --model DIR --tokens 5,17,300 --out FILE.safetensors [--device cpu]`:
//! runs one sequence and writes tensor `logits`, shape [T, vocab], f32, on either backend.

use std::path::PathBuf;

use anyhow::{Context, bail};
use rstar2_backend::Device;
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
    /// cpu, gpu, gpu:N (see `cargo xtask devices`) or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn load_model(dir: &std::path::Path) -> anyhow::Result<Model> {
    let config = Config::from_file(&dir.join("config.json"))?;
    let params = Params::load(dir, &config)?;
    Ok(Model::new(config, params))
}

pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    let device = rstar2_train::open_device(&args.device)?;
    let model = load_model(&args.model)?;
    let v = model.config.vocab_size;
    if let Some(bad) = args.tokens.iter().find(|&&t| t as usize >= v) {
        bail!("token id {bad} is outside the vocabulary (size {v})");
    }
    let batch = Batch::new(std::slice::from_ref(&args.tokens));
    let logits = match &device {
        Device::Cpu => model.forward(&batch).logits,
        #[cfg(feature = "gpu")]
        Device::Gpu(gpu) => rstar2_gpu::GpuModel::new(gpu.clone(), &model).logits(&batch),
    };
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![args.tokens.len(), v], &bytes)?;
    let data = safetensors::serialize([("logits", view)], None)?;
    rstar2_model::write_atomic(&args.out, &data).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits [{}, {v}] to {}", args.tokens.len(), args.out.display());
    Ok(())
}
