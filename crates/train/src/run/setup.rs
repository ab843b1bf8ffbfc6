//! What a run starts from, agreed by every rank: the config, the devices, the model and
//! optimizer (new or from a checkpoint), the data and the tool environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rstar2_backend::{Device, Policy};
use rstar2_model::{AdamW, Config, DecodeWeights, Model, Params, Tokenizer};
use rstar2_sandbox::queue::{QueueClient, QueueConfig};
use rstar2_sandbox::remote::HttpClient;
use rstar2_sandbox::{IsolationKind, Sandbox, SandboxConfig};
use rstar2_tasks::Task;
use rstar2_tasks::synth::{Split, SynthConfig};
use serde::Serialize;

use super::{Phase, Start, State, TrainOptions};
use crate::collective::{self, Collective};
use crate::config::{self, Init, TrainConfig};

/// Each rank's outcome of a step that may fail on some ranks: if any failed, every rank
/// returns the lowest failing rank's message, so no rank waits forever for the others.
pub(super) fn agree<T>(comm: &dyn Collective, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    if comm.size() == 1 {
        return outcome;
    }
    let mine = outcome.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
    let all = comm.all_gather_bytes(mine.as_bytes());
    match all.iter().position(|m| !m.is_empty()) {
        None => outcome,
        Some(rank) => bail!("rank {rank}: {}", String::from_utf8_lossy(&all[rank])),
    }
}

/// What rank 0 computes (reads from its disk), on every rank.
pub(super) fn from_leader<T: Serialize + serde::de::DeserializeOwned>(comm: &dyn Collective, read: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if comm.size() == 1 {
        return read();
    }
    let value = agree(comm, if comm.rank() == 0 { read().map(Some) } else { Ok(None) })?;
    let mut bytes = value.as_ref().map(|v| serde_json::to_vec(v).expect("a value rank 0 read serializes")).unwrap_or_default();
    comm.broadcast_bytes(&mut bytes);
    serde_json::from_slice(&bytes).context("a value from rank 0")
}

/// Refuses to start when ranks were given different configs or models.
pub(super) fn agree_on_config(comm: &dyn Collective, config: &TrainConfig) -> anyhow::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    // Devices are each rank's own.
    let shared = TrainConfig { device: String::new(), ..config.clone() };
    let model = Config::from_file(&crate::paths::resolve(&config.model).join("config.json")).ok().map(|c| serde_json::to_string(&c).expect("a model config serializes"));
    let mine = serde_json::to_vec(&(toml::to_string(&shared)?, model)).expect("a pair of strings serializes");
    let all = comm.all_gather_bytes(&mine);
    let (first_config, first_model): (String, Option<String>) = serde_json::from_slice(&all[0]).expect("rank 0's config");
    for (rank, bytes) in all.iter().enumerate().skip(1) {
        let (c, m): (String, Option<String>) = serde_json::from_slice(bytes).expect("a rank's config");
        if c != first_config {
            let diff = first_config.lines().zip(c.lines()).find(|(a, b)| a != b).map_or(String::new(), |(a, b)| format!(": rank 0 has `{a}`, rank {rank} `{b}`"));
            bail!("rank {rank} was given another training config than rank 0{diff} (every rank must run the same command)");
        }
        if let (Some(a), Some(b)) = (&first_model, &m)
            && a != b
        {
            bail!("rank {rank}'s model {} has another shape than rank 0's (config.json differs)", config.model.display());
        }
    }
    Ok(())
}

/// The devices of a spec list, `{local_rank}` replaced.
pub fn open_devices(spec: &str) -> anyhow::Result<Vec<Device>> {
    let spec = spec.replace("{local_rank}", &collective::local_rank().to_string());
    spec.split(',').map(|s| open_device(s.trim()).with_context(|| format!("opening device {:?}", s.trim()))).collect()
}

/// The config of a new run: the file or preset over the default, then the options.
pub(super) fn build_config(options: &TrainOptions) -> anyhow::Result<TrainConfig> {
    let preset = match &options.preset {
        Some(name) => {
            let path = crate::paths::workspace_root().join("configs").join(format!("{name}.toml"));
            if !path.exists() {
                bail!("no preset {name:?}: {} does not exist", path.display());
            }
            Some(path)
        }
        None => None,
    };
    let config_file = preset.as_deref().or(options.config.as_deref());
    let mut config = TrainConfig::load(config_file)?;
    if let Some(m) = &options.model {
        config.model = m.clone();
        config.init = Init::Pretrained;
        // A real model keeps its own chat format (chat.json when trained here, else the
        // original rStar2 one) unless the config file sets [chat].
        if !config::sets_table(config_file, "chat")? {
            config.chat = match std::fs::read_to_string(m.join("chat.json")) {
                Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}/chat.json", m.display()))?,
                Err(_) => rstar2_rollout::ChatFormat::rstar2(),
            };
        }
        if options.name.is_none() {
            config.name = m.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
        }
    }
    if let Some(d) = &options.data {
        config.data.train = d.display().to_string();
        config.data.test = d.display().to_string();
    }
    if let Some(d) = &options.device {
        config.device = d.clone();
    }
    if let Some(a) = options.algo {
        config.algo = a;
    }
    if let Some(n) = &options.name {
        config.name = n.clone();
    }
    if let Some(s) = options.seed {
        config.seed = s;
    }
    config.validate()?;
    Ok(config)
}

/// Rank 0: the model, tokenizer and data of a new run, and its fresh folder.
pub(super) fn read_start(options: &TrainOptions, config: TrainConfig) -> anyhow::Result<(Start, Params)> {
    let model_dir = crate::paths::resolve(&config.model);
    let model_config = Config::from_file(&model_dir.join("config.json")).with_context(|| format!("model folder {}", model_dir.display()))?;
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(&tokenizer_path).with_context(|| format!("reading {}", tokenizer_path.display()))?;
    Tokenizer::from_json(&tokenizer_json, &tokenizer_path.display().to_string())?;
    let params = match config.init {
        Init::Random => Params::random(&model_config, config.seed),
        Init::Pretrained => Params::load(&model_dir, &model_config).with_context(|| {
            let name = model_dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
            format!("loading the weights of {} (for a known model: cargo xtask fetch-model {name})", model_dir.display())
        })?,
    };
    let (train, test) = load_tasks(&config)?;
    let dir = fresh_dir(&options.runs_dir, &config.name)?;
    std::fs::write(dir.join("config.toml"), toml::to_string(&config)?)?;
    println!("rstar2 train: run folder {}", dir.display());
    println!("settings (saved to {}):\n{}", dir.join("config.toml").display(), toml::to_string(&config)?);
    println!(
        "model: {} ({:.2} M parameters, {} layers, vocab {}), {} train / {} test problems, algo {:?}",
        model_dir.display(),
        params.data.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
        model_config.num_hidden_layers,
        model_config.vocab_size,
        train.len(),
        test.len(),
        config.algo
    );
    let state = State { phase: Phase::Sft, stage: 0, stage_step: 0, rl_step: 0, adam_step: 0, pool: Vec::new(), evals: BTreeMap::new(), stages: Vec::new(), metric_lines: 0, wall_seconds: 0.0 };
    Ok((Start { dir, config, model_config, tokenizer_json, state, train, test, moments: false }, params))
}

/// AdamW's first and second moments.
pub(super) type Moments = (Params, Params);

/// Rank 0: a run folder's last checkpoint (metrics written after it are dropped: they are
/// produced again).
pub(super) fn read_checkpoint(dir: &Path) -> anyhow::Result<(Start, (Params, Moments))> {
    let text = std::fs::read_to_string(dir.join("config.toml")).with_context(|| format!("{} is not a run folder (no config.toml)", dir.display()))?;
    let config: TrainConfig = toml::from_str(&text).with_context(|| format!("{}/config.toml", dir.display()))?;
    let ckpt =
        [dir.join("checkpoint"), dir.join("checkpoint.old")].into_iter().find(|p| p.join("state.json").exists()).with_context(|| format!("{} has no checkpoint to resume from", dir.display()))?;
    let state: State = serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json"))?).with_context(|| format!("{}/state.json", ckpt.display()))?;
    let model_config = Config::from_file(&ckpt.join("config.json"))?;
    let params = Params::load(&ckpt, &model_config)?;
    let m = Params::load(&ckpt.join("optimizer_m"), &model_config)?;
    let v = Params::load(&ckpt.join("optimizer_v"), &model_config)?;
    let tokenizer_path = ckpt.join("tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(&tokenizer_path).with_context(|| format!("reading {}", tokenizer_path.display()))?;
    Tokenizer::from_json(&tokenizer_json, &tokenizer_path.display().to_string())?;
    let metrics = dir.join("metrics.jsonl");
    let kept: Vec<String> = std::fs::read_to_string(&metrics).unwrap_or_default().lines().take(state.metric_lines).map(str::to_string).collect();
    rstar2_model::write_atomic(&metrics, kept.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes())?;
    let (train, test) = load_tasks(&config)?;
    println!("rstar2 train: resuming {} at {:?} stage {} step {}", dir.display(), state.phase, state.stage + 1, state.stage_step);
    Ok((Start { dir: dir.to_path_buf(), config, model_config, tokenizer_json, state, train, test, moments: true }, (params, (m, v))))
}

pub(super) fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut x = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

pub(super) fn load_tasks(config: &TrainConfig) -> anyhow::Result<(Vec<Task>, Vec<Task>)> {
    let d = &config.data;
    let synth = SynthConfig { levels: d.levels.clone(), ..Default::default() };
    let from = |source: &str, split: Split, count: usize, seed: u64| -> anyhow::Result<Vec<Task>> {
        if source == "synthetic" {
            return Ok(rstar2_tasks::synth::generate(&synth, split, count, seed)?);
        }
        let (path, tasks) = load_file(source)?;
        // One file for both: split it by a hash of the question; two files are their own splits.
        let same_file = d.train == d.test;
        let picked: Vec<Task> = tasks.into_iter().filter(|t| !same_file || rstar2_tasks::synth::split_of(&t.question) == split).take(count).collect();
        if picked.is_empty() {
            bail!("{}: no usable {split:?} problems (rows need a question and an answer)", path.display());
        }
        Ok(picked)
    };
    let test = from(&d.test, Split::Test, d.test_problems, rstar2_tasks::synth::HELD_OUT_SEED)?;
    Ok((from(&d.train, Split::Train, d.train_problems, config.seed)?, test))
}

/// The problems of a data set given by name (gsm8k, ...) or path, the rows it skipped reported.
pub(super) fn load_file(source: &str) -> anyhow::Result<(PathBuf, Vec<Task>)> {
    let path = rstar2_tasks::real::resolve(source, &crate::paths::workspace_root())?;
    let (tasks, skipped) = rstar2_tasks::jsonl::load_jsonl(&path)?;
    if !skipped.is_empty() {
        eprintln!("{}: skipped {} rows (first: line {}: {})", path.display(), skipped.len(), skipped[0].line, skipped[0].reason);
    }
    Ok((path, tasks))
}

/// The first `count` problems of a data set given by name or path (for evaluations only).
pub(super) fn load_named(data: &str, count: usize) -> anyhow::Result<Vec<Task>> {
    let (path, tasks) = load_file(data)?;
    let tasks: Vec<Task> = tasks.into_iter().take(count).collect();
    if tasks.is_empty() {
        bail!("{}: no problems with answers to evaluate", path.display());
    }
    Ok(tasks)
}

/// The tool environment, its interpreters where `isolation` says. With `real_math` (runs on a
/// real data set) sympy and mpmath are importable, from target/pylib where `fetch-data` (or the
/// tests) put them, and imported when each interpreter starts so no call pays the import;
/// without them (nothing is downloaded at run time) it says so and runs without.
pub fn sandbox(real_math: bool, isolation: IsolationKind) -> anyhow::Result<Sandbox> {
    let mut c = SandboxConfig::of_kind(isolation)?;
    c.workers = c.workers.max(2);
    if real_math {
        let pylib = crate::paths::pylib_dir();
        if crate::paths::has_pylib(&pylib) {
            c.interpreter.pylib = Some(pylib);
            c.interpreter.preload = vec!["sympy".into(), "mpmath".into()];
        } else {
            eprintln!("note: the tool environment has no sympy/mpmath ({} is empty; `cargo xtask fetch-data math` puts them there)", pylib.display());
        }
    }
    Ok(Sandbox::new(c)?)
}

/// The tool environment of a training run: [`sandbox`], the HTTP server `[sandbox] url` or the
/// Redis queue `[sandbox] redis` names (checked to answer now).
pub fn run_tools(config: &TrainConfig) -> anyhow::Result<Sandbox> {
    if let Some(url) = &config.sandbox.url {
        let client = HttpClient::connect(url).context("[sandbox] url")?;
        let (queued, workers) = client.status().context("[sandbox] url")?;
        println!("tools: code-judge HTTP server {} ({workers} workers, {queued} calls waiting)", client.url());
        return Ok(Sandbox::http(client));
    }
    let Some(uri) = &config.sandbox.redis else {
        let local = sandbox(config.data.uses_real_data(), config.sandbox.isolation)?;
        println!("tools: {} {} interpreters on this machine", local.workers(), config.sandbox.isolation);
        return Ok(local);
    };
    let mut queue = QueueConfig::new(uri.clone());
    if let Some(prefix) = &config.sandbox.key_prefix {
        queue.key_prefix = prefix.clone();
    }
    let client = QueueClient::connect(queue).context("[sandbox] redis")?;
    let (queued, workers) = client.status().context("[sandbox] redis")?;
    println!("tools: code-judge queue {} at {uri} ({workers} workers registered, {queued} items waiting)", client.config().work_queue());
    if workers == 0 {
        eprintln!("note: no worker is registered on {uri} yet; tool calls wait for one (`cargo xtask sandbox worker --redis {uri}`)");
    }
    Ok(Sandbox::queue(client))
}

/// Whether a data set is a real one (not the built-in synthetic problems).
pub fn is_real_data(data: &str) -> bool {
    data != "synthetic"
}

/// Opens `auto | cpu | gpu | gpu:N` and says which backend was chosen.
pub fn open_device(spec: &str) -> anyhow::Result<Device> {
    let device = Device::open(spec)?;
    // stderr: `eval` and `generate` keep stdout for their machine-readable output.
    eprintln!("device: {}", device.describe());
    Ok(device)
}

pub(super) fn fresh_dir(runs: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
    for i in 0.. {
        let dir = if i == 0 { runs.join(name) } else { runs.join(format!("{name}-{}", i + 1)) };
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    unreachable!()
}

/// The policy being trained: rollouts and evaluations read its f32 weights (on the CPU packed
/// for the decode kernel, packed again after optimizer steps), so they sample from exactly the
/// policy the trainer's log-probs describe.
pub fn training_policy(device: &Device, model: Model, optimizer: AdamW) -> anyhow::Result<Policy> {
    let mut policy = Policy::new(device, model, Some(optimizer));
    policy.set_decode_weights(DecodeWeights::F32)?;
    Ok(policy)
}
