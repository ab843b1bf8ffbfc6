//! The training config: one TOML file; the embedded default (`configs/tiny.toml`) supplies
//! every field a user file leaves out.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rstar2_rollout::{ChatFormat, ToolDispatch};
use rstar2_sandbox::IsolationKind;
use rstar2_tasks::sft::SftMix;
use serde::{Deserialize, Serialize};

/// The default run's config, embedded.
pub const DEFAULT_TOML: &str = include_str!("../../../configs/tiny.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// Oversample G * oversample, keep failures uniformly and the cleanest successes.
    GrpoRoc,
    /// Plain GRPO: sample G, keep all.
    Grpo,
}

impl Algo {
    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Algo::GrpoRoc => "grpo-roc",
            Algo::Grpo => "grpo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    Random,
    Pretrained,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub name: String,
    pub seed: u64,
    pub model: PathBuf,
    pub init: Init,
    pub device: String,
    pub algo: Algo,
    pub data: DataConfig,
    pub chat: ChatFormat,
    pub sft: SftConfig,
    pub rl: RlConfig,
    pub eval: EvalConfig,
    /// Where the tool calls run (default, and left out of saved configs: a pool of worker
    /// processes on this machine).
    #[serde(default, skip_serializing_if = "ToolsConfig::is_default")]
    pub sandbox: ToolsConfig,
}

/// `[sandbox]`: tool calls on this machine, or on other machines' code-judge workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// A Redis server (redis://HOST:PORT, redis+unix:///PATH) whose code-judge work queue
    /// `sandbox worker --redis` (or code-judge's own workers) serve: rollouts send their tool
    /// calls there instead of running them here. Those workers must have sympy for real-data
    /// runs (`--pylib target/pylib --preload sympy,mpmath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// The queue's key prefix (code-judge's REDIS_KEY_PREFIX, default "js").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// A code-judge HTTP server (http://HOST:PORT): `sandbox serve` on another machine, or
    /// code-judge's own front end; rollouts send their tool calls there as long batches. Its
    /// workers must have sympy for real-data runs. Not together with `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where this machine's interpreters live when neither is set: "in-process" (the default:
    /// threads of the training process, the lowest latency) or "process" (worker processes,
    /// which can be killed).
    #[serde(default, skip_serializing_if = "is_default_isolation")]
    pub isolation: IsolationKind,
}

fn is_default_isolation(kind: &IsolationKind) -> bool {
    *kind == IsolationKind::default()
}

impl ToolsConfig {
    /// Nothing set: in-process tools on this machine.
    pub fn is_default(&self) -> bool {
        self.redis.is_none() && self.key_prefix.is_none() && self.url.is_none() && is_default_isolation(&self.isolation)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: String,
    pub test: String,
    pub train_problems: usize,
    pub test_problems: usize,
    pub levels: Vec<u8>,
    /// More data sets (names such as gsm8k, or paths) the final model is evaluated on, on
    /// their first test_problems problems.
    #[serde(default)]
    pub also_test: Vec<String>,
}

impl DataConfig {
    /// Whether the run touches a real data set (then its tool environment has sympy).
    pub fn uses_real_data(&self) -> bool {
        crate::is_real_data(&self.train) || crate::is_real_data(&self.test) || !self.also_test.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Difficulty levels SFT traces are drawn from (RL and evaluation use data.levels).
    pub levels: Vec<u8>,
    pub examples: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub warmup_fraction: f32,
    pub mix: SftMix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positives {
    Sample,
    TopK,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    pub group_size: usize,
    pub oversample: usize,
    pub prompts_per_step: usize,
    pub lr: f32,
    pub warmup_steps: u64,
    pub temperature: f32,
    pub top_p: f32,
    pub clip_low: f32,
    pub clip_high: f32,
    pub max_grad_norm: f32,
    pub micro_batch_tokens: usize,
    pub checkpoint_every: usize,
    pub positives: Positives,
    pub dispatch: ToolDispatch,
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub steps: usize,
    pub max_response_tokens: usize,
    pub max_turns: u32,
    #[serde(default)]
    pub filter_solved: Option<FilterSolved>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSolved {
    pub problems: usize,
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub samples: usize,
    pub temperature: f32,
    pub max_response_tokens: usize,
    pub max_turns: u32,
    /// Score the last `\boxed{}` anywhere in the response (the release's PRIME grader), not
    /// only inside `<answer>...</answer>`: for models not trained on the rStar2 format.
    #[serde(default)]
    pub answer_anywhere: bool,
}

/// Whether the config file (if any) has the top-level table `name`.
pub fn sets_table(file: Option<&Path>, name: &str) -> anyhow::Result<bool> {
    let Some(path) = file else { return Ok(false) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let value: toml::Value = toml::from_str(&text).with_context(|| format!("config {} is not valid TOML", path.display()))?;
    Ok(value.get(name).is_some())
}

/// Overlays `over` on `base`: tables merge key by key, everything else is replaced.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl TrainConfig {
    /// The default config, with `file` (if any) laid over it.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut value: toml::Value = toml::from_str(DEFAULT_TOML).context("the embedded default config")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
            let over: toml::Value = toml::from_str(&text).with_context(|| format!("config {} is not valid TOML", path.display()))?;
            merge(&mut value, over);
        }
        let config: TrainConfig = value.try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("config {}: {}", file.map_or("(default)".into(), |p| p.display().to_string()), e.message()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let rl = &self.rl;
        if rl.group_size < 2 {
            bail!("rl.group_size must be at least 2 (advantages need a group), got {}", rl.group_size);
        }
        if rl.oversample < 1 || rl.prompts_per_step == 0 || rl.micro_batch_tokens == 0 {
            bail!("rl.oversample, rl.prompts_per_step and rl.micro_batch_tokens must be positive");
        }
        if self.sft.batch_size == 0 || self.eval.samples == 0 {
            bail!("sft.batch_size and eval.samples must be positive");
        }
        for (i, s) in rl.stages.iter().enumerate() {
            if s.max_response_tokens == 0 || s.max_turns == 0 {
                bail!("rl.stages[{i}]: max_response_tokens and max_turns must be positive");
            }
        }
        if !(0.0..=1.0).contains(&(self.sft.mix.direct + self.sft.mix.retry)) {
            bail!("sft.mix: direct + retry must lie in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.sft.mix.wrong) {
            bail!("sft.mix.wrong is a share of traces and must lie in [0, 1], got {}", self.sft.mix.wrong);
        }
        if self.sandbox.url.is_some() && (self.sandbox.redis.is_some() || self.sandbox.key_prefix.is_some()) {
            bail!("[sandbox]: url (an HTTP server) and redis / key_prefix (a queue) name two different tool environments; set one");
        }
        if (self.sandbox.url.is_some() || self.sandbox.redis.is_some()) && !is_default_isolation(&self.sandbox.isolation) {
            bail!("[sandbox]: isolation is where this machine's interpreters live; with url or redis the tools run elsewhere");
        }
        for spec in self.device.split(',') {
            let spec = spec.trim();
            if !matches!(spec, "cpu" | "auto") && !spec.starts_with("gpu") {
                bail!("device {:?}: expected auto, cpu, gpu or gpu:N, or a comma-separated list of them (one replica each)", self.device);
            }
        }
        Ok(())
    }

    /// Rollouts sampled per prompt.
    pub fn samples_per_prompt(&self) -> usize {
        match self.algo {
            Algo::GrpoRoc => self.rl.group_size * self.rl.oversample,
            Algo::Grpo => self.rl.group_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_and_overrides_merge() {
        let c = TrainConfig::load(None).unwrap();
        assert_eq!(c.rl.stages.len(), 2);
        let dir = std::env::temp_dir().join(format!("rstar2-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[rl]\nlr = 0.5\n").unwrap();
        let c2 = TrainConfig::load(Some(&f)).unwrap();
        assert_eq!(c2.rl.lr, 0.5);
        assert_eq!(c2.rl.group_size, c.rl.group_size);
        std::fs::write(&f, "[rl]\nlrr = 0.5\n").unwrap();
        let e = TrainConfig::load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        std::fs::write(&f, "[sandbox]\nisolation = \"process\"\n").unwrap();
        assert_eq!(TrainConfig::load(Some(&f)).unwrap().sandbox.isolation, IsolationKind::Process);
        assert_eq!(c.sandbox.isolation, IsolationKind::InProcess, "in-process by default");
        std::fs::write(&f, "[sandbox]\nisolation = \"container\"\n").unwrap();
        let e = format!("{:#}", TrainConfig::load(Some(&f)).unwrap_err());
        assert!(e.contains("container") && e.contains("in-process"), "{e}");
        std::fs::write(&f, "[sandbox]\nisolation = \"process\"\nurl = \"http://127.0.0.1:1\"\n").unwrap();
        let e = format!("{:#}", TrainConfig::load(Some(&f)).unwrap_err());
        assert!(e.contains("isolation") && e.contains("elsewhere"), "{e}");
        std::fs::write(&f, "[rl\n").unwrap();
        assert!(TrainConfig::load(Some(&f)).unwrap_err().to_string().contains("not valid TOML"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn algo_names_are_the_config_names() {
        for algo in [Algo::Grpo, Algo::GrpoRoc] {
            assert_eq!(serde_json::to_value(algo).unwrap(), algo.name());
        }
    }

    #[test]
    fn every_shipped_config_loads() {
        let dir = crate::paths::workspace_root().join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = TrainConfig::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(!c.rl.stages.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 4, "{n} configs");
    }
}
