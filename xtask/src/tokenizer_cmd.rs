//! `cargo xtask train-tokenizer`: trains the tiny preset's BPE on synthetic task traces.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rstar2_rollout::ChatFormat;
use rstar2_sandbox::{Sandbox, SandboxConfig};
use rstar2_tasks::sft::{SftMix, build_traces};
use rstar2_tasks::synth::{Split, SynthConfig, generate};

/// Arguments of `train-tokenizer`.
#[derive(Args)]
pub struct TokenizerArgs {
    /// Where to write tokenizer.json [default: models/tiny/tokenizer.json of the checkout or
    /// RSTAR2_HOME]; its folder's config.json gets the new vocabulary size.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Vocabulary size, added tokens included.
    #[arg(long, default_value_t = 1024)]
    pub vocab: usize,
    /// Traces in the training corpus.
    #[arg(long, default_value_t = 3000)]
    pub traces: usize,
}

pub fn run(args: TokenizerArgs) -> anyhow::Result<()> {
    let out = args.out.unwrap_or_else(|| rstar2_train::paths::workspace_root().join("models/tiny/tokenizer.json"));
    let tasks = generate(&SynthConfig::default(), Split::Train, args.traces, 12345)?;
    let sandbox = Sandbox::new(SandboxConfig::in_process())?;
    let chat: ChatFormat = rstar2_train::config::TrainConfig::load(None)?.chat;
    let traces = build_traces(&tasks, &sandbox, &chat, &SftMix::default(), 1)?;
    let corpus: Vec<String> = traces.iter().map(|t| t.text()).collect();
    let json = rstar2_tasks::bpe::train_bpe(&corpus, args.vocab)?;
    rstar2_model::write_atomic(&out, json.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    let tokenizer = rstar2_model::Tokenizer::from_file(&out)?;
    let prompt = tokenizer.encode(&chat.prompt(&tasks[0].question)).len();
    let mean: f64 = corpus.iter().map(|t| tokenizer.encode(t).len() as f64).sum::<f64>() / corpus.len() as f64;
    // The model's vocabulary is exactly the tokenizer's: no id the model can sample is unknown.
    let config_path = out.with_file_name("config.json");
    if let Ok(text) = std::fs::read_to_string(&config_path) {
        let mut config: serde_json::Value = serde_json::from_str(&text)?;
        config["vocab_size"] = tokenizer.vocab_size().into();
        rstar2_model::write_atomic(&config_path, (serde_json::to_string_pretty(&config)? + "\n").as_bytes())?;
    }
    println!("wrote {} ({} tokens); a prompt is {prompt} tokens, a whole trace {mean:.0} on average", out.display(), tokenizer.vocab_size());
    Ok(())
}
