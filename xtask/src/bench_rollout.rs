//! `cargo xtask bench rollout`: the asynchronous scheduler (tool calls dispatched the moment a
//! turn ends, other sequences decoding meanwhile, finished ones replaced at once) against
//! synchronous per-turn tool execution (a wave decodes until every member ends its turn, then
//! all calls run as one batch) on the same work, in one run.
//!
//! The work: the tiny model's real forward computes every step (so decoding costs what it
//! costs), while the tokens emitted follow scripts, so both modes generate exactly the same
//! episodes: 1 to 3 turns with tool calls of uneven cost (RustPython loops of 2 000 to
//! 120 000 iterations, a few ms to about 0.1 s).

use std::collections::HashMap;

use clap::Args;
use rstar2_model::kv::SeqId;
use rstar2_model::{Config, Model, Params, Tokenizer};
use rstar2_rollout::engine::{CpuEngine, Engine, ScriptedEngine};
use rstar2_rollout::{Request, RolloutConfig, RolloutError, ToolDispatch, generate};

/// Arguments of `bench rollout`.
#[derive(Args)]
pub struct RolloutBenchArgs {
    /// Trajectories.
    #[arg(long, default_value_t = 64)]
    pub trajectories: usize,
    /// KV capacity of the engine, in trajectories.
    #[arg(long, default_value_t = 16)]
    pub concurrent: usize,
    /// Repetitions per mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

/// Real compute, scripted tokens.
struct Forced<'m> {
    compute: CpuEngine<'m>,
    script: ScriptedEngine,
}

impl Engine for Forced<'_> {
    fn name(&self) -> String {
        "cpu+script".into()
    }
    fn capacity(&self) -> usize {
        self.compute.capacity()
    }
    fn max_sequence(&self) -> usize {
        self.compute.max_sequence()
    }
    fn extend(&mut self, seqs: &[SeqId], chunks: &[&[u32]], wanted: &[bool]) -> Result<Vec<Vec<f32>>, RolloutError> {
        self.compute.extend(seqs, chunks, wanted)?;
        self.script.extend(seqs, chunks, wanted)
    }
    fn release(&mut self, seq: SeqId) {
        self.compute.release(seq);
        self.script.release(seq);
    }
}

fn scripts(tok: &Tokenizer, n: usize) -> HashMap<SeqId, Vec<u32>> {
    (0..n as u64)
        .map(|t| {
            let turns = 1 + (t % 3);
            let mut text = String::new();
            for k in 0..turns {
                // Uneven tool latency: 2e3 to 1.2e5 loop iterations.
                let n = 2_000 * (1 + (t * 7 + k * 13) % 60);
                let code = format!("s = 0\nfor i in range({n}):\n    s += i % 7\nprint(s)");
                text += &format!(
                    " Step {k}.\n<tool_call>\n{{\"name\": \"python_code_with_standard_io\", \"arguments\": {{\"code\": {}, \"input\": \"\"}}}}\n</tool_call><|im_end|>",
                    serde_json::to_string(&code).unwrap()
                );
            }
            text += " Done.</reason>\n<answer>\\boxed{0}</answer><|im_end|>";
            (t, tok.encode(&text))
        })
        .collect()
}

pub fn run(args: RolloutBenchArgs) -> anyhow::Result<()> {
    let root = crate::test_cmd::workspace_root();
    let dir = root.join("models/tiny");
    let config = Config::from_file(&dir.join("config.json"))?;
    let model = Model::new(config.clone(), Params::random(&config, 0));
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let sandbox = rstar2_train::sandbox(false, rstar2_sandbox::IsolationKind::default())?;
    let end = tok.token_id("<|im_end|>").expect("tiny tokenizer has <|im_end|>");
    let requests: Vec<Request> = (0..args.trajectories).map(|i| Request { id: format!("b{i}"), question: format!("Bench problem {i}."), answer: None }).collect();
    let mut rc = RolloutConfig { max_response_tokens: 400, max_turns: 8, ..Default::default() };
    // The tiny default's format (no system prompt): prefill would otherwise dominate.
    rc.chat = rstar2_train::config::TrainConfig::load(None)?.chat;
    let prompt = tok.encode(&rc.chat.prompt("Bench problem 10.")).len();
    let capacity = args.concurrent * (prompt + rc.max_response_tokens);
    println!(
        "rollout benchmark: {} trajectories (1-3 tool calls each, loops of 2e3-1.2e5 iterations), tiny model decoding, KV room for {} at once, sandbox {} workers",
        args.trajectories,
        args.concurrent,
        sandbox.workers()
    );
    println!("{:<10} {:>12} {:>12} {:>12} {:>14} {:>10}", "mode", "episodes/s", "tokens/s", "tool calls/s", "tool wait (s)", "wall (s)");
    let mut medians = Vec::new();
    for dispatch in [ToolDispatch::Async, ToolDispatch::Lockstep] {
        let mut runs = Vec::new();
        for _ in 0..args.repeats {
            let mut engine = Forced { compute: CpuEngine::new(&model, capacity), script: ScriptedEngine::new(scripts(&tok, args.trajectories), end, config.vocab_size, capacity) };
            let c = RolloutConfig { dispatch, samples: 1, ..rc.clone() };
            let out = generate(vec![&mut engine as &mut dyn Engine], &tok, &sandbox, &requests, &c, None)?;
            anyhow::ensure!(out.episodes.iter().all(|e| e.finish_reason == rstar2_rollout::FinishReason::Answered), "every scripted episode ends with an answer");
            runs.push(out.metrics);
        }
        runs.sort_by(|a, b| a.wall_seconds.total_cmp(&b.wall_seconds));
        let m = runs[runs.len() / 2].clone();
        println!(
            "{:<10} {:>12.2} {:>12.0} {:>12.1} {:>14.2} {:>10.2}",
            format!("{dispatch:?}").to_lowercase(),
            m.episodes as f64 / m.wall_seconds,
            m.tokens_per_second,
            m.tool_calls_per_second,
            m.tool_wait_seconds,
            m.wall_seconds
        );
        medians.push(m);
    }
    println!("async / lockstep: {:.2}x episodes/s (median of {} runs each, same episodes)", medians[1].wall_seconds / medians[0].wall_seconds, args.repeats);
    Ok(())
}
