//! End-to-end rollouts with a scripted policy (a stand-in model that emits given tokens) and
//! the real tiny model: tool calls, malformed calls, truncation, turn and length budgets,
//! several engines of unequal capacity.

use std::collections::HashMap;
use std::path::PathBuf;

use rstar2_model::Tokenizer;
use rstar2_rollout::engine::{CpuEngine, Engine, ScriptedEngine};
use rstar2_rollout::{ChatFormat, Episode, FinishReason, Request, RolloutConfig, ToolDispatch, generate};
use rstar2_sandbox::{Sandbox, SandboxConfig, Status};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&root().join("models/tiny/tokenizer.json")).unwrap()
}

fn sandbox() -> Sandbox {
    let mut c = SandboxConfig::in_process();
    c.workers = 2;
    Sandbox::new(c).unwrap()
}

fn call(code: &str) -> String {
    format!(
        " Let me compute.\n<tool_call>\n{{\"name\": \"python_code_with_standard_io\", \"arguments\": {{\"code\": {}, \"input\": \"\"}}}}\n</tool_call><|im_end|>",
        serde_json::to_string(code).unwrap()
    )
}

const ANSWER_42: &str = " The result is 42.</reason>\n<answer>\\boxed{42}</answer><|im_end|>";

fn script(tok: &Tokenizer, turns: &[&str]) -> Vec<u32> {
    turns.iter().flat_map(|t| tok.encode(t)).collect()
}

fn config() -> RolloutConfig {
    let mut c = RolloutConfig::default();
    c.chat.show_execution_time = false;
    c.max_response_tokens = 400;
    c.max_turns = 5;
    c
}

fn request(answer: &str) -> Request {
    Request { id: "q".into(), question: "What is 6 times 7?".into(), answer: Some(answer.into()) }
}

fn run_one(turns: &[&str], config: &RolloutConfig) -> (Episode, ScriptedEngine) {
    let tok = tokenizer();
    let end = tok.token_id("<|im_end|>").unwrap();
    let mut engine = ScriptedEngine::new(HashMap::from([(0, script(&tok, turns))]), end, tok.vocab_size(), 100_000);
    let out = generate(vec![&mut engine as &mut dyn Engine], &tok, &sandbox(), &[request("42")], config, None).unwrap();
    (out.episodes.into_iter().next().unwrap(), engine)
}

#[test]
fn tool_call_round_trip_passes_tokens_straight_through() {
    let tok = tokenizer();
    let c = config();
    let turn1 = call("print(6*7)");
    let (e, engine) = run_one(&[&turn1, ANSWER_42], &c);
    assert_eq!(e.finish_reason, FinishReason::Answered);
    assert_eq!(e.reward, Some(1.0));
    assert_eq!(e.turns, 2);
    assert_eq!(e.tool_calls.len(), 1);
    let outcome = e.tool_calls[0].outcome.as_ref().unwrap();
    assert_eq!((outcome.status, outcome.stdout.as_str()), (Status::Ok, "42\n"));
    assert_eq!(e.tool_calls[0].shown, "Tool call success\nstdout: 42\n");
    // The token stream: prompt, turn 1, tool segment (tokenized once), turn 2.
    let segment = tok.encode(&c.chat.tool_responses(&[e.tool_calls[0].shown.clone()]));
    let (t1, t2) = (tok.encode(&turn1), tok.encode(ANSWER_42));
    let mut expected = tok.encode(&c.chat.prompt("What is 6 times 7?"));
    assert_eq!(e.prompt_ids, expected);
    expected.extend(&t1);
    expected.extend(&segment);
    expected.extend(&t2);
    assert_eq!(e.ids, expected);
    let mask: Vec<u8> = [vec![1; t1.len()], vec![0; segment.len()], vec![1; t2.len()]].concat();
    assert_eq!(e.loss_mask, mask);
    assert_eq!(e.logprobs.len(), mask.len());
    assert!(e.logprobs.iter().zip(&mask).all(|(&lp, &m)| if m == 0 { lp == 0.0 } else { lp <= 0.0 && lp > -1e-6 }));
    // What the engine was fed is exactly the episode minus its last (never fed) token.
    assert_eq!(engine.fed[&0], e.ids[..e.ids.len() - 1]);
    assert!(e.text.starts_with(" Let me compute.") && e.text.contains("<tool_response>\nTool call success"));
}

#[test]
fn malformed_and_unknown_calls_are_answered_and_the_rollout_goes_on() {
    let bad_json = " Let me.\n<tool_call>\n{\"name\": \"python_code_with_standard_io\", \"arguments\": {\"code\": \"print(1)\"\n</tool_call><|im_end|>";
    let unknown = " Again.\n<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"code\": \"ls\"}}\n</tool_call><|im_end|>";
    let (e, _) = run_one(&[bad_json, unknown, &call("print(40+2)"), ANSWER_42], &config());
    assert_eq!(e.finish_reason, FinishReason::Answered);
    assert_eq!(e.reward, Some(1.0));
    assert_eq!(e.tool_calls.len(), 3);
    assert!(e.tool_calls[0].parse_error.as_ref().unwrap().starts_with("Failed to decode tool call:"));
    assert!(e.tool_calls[1].shown.starts_with("Unknown tool: bash"));
    assert!(e.tool_calls[0].failed() && e.tool_calls[1].failed() && !e.tool_calls[2].failed());
    assert_eq!(e.tool_usage().failed_tool_calls, 2);
    assert!(e.text.contains("<tool_response>\nFailed to decode tool call:"));
}

#[test]
fn tool_output_is_truncated_for_the_model_but_kept_whole_in_the_record() {
    let (e, _) = run_one(&[&call("print('x' * 600)"), ANSWER_42], &config());
    let shown = &e.tool_calls[0].shown;
    assert!(shown.contains("...(truncated)..."), "{shown}");
    assert_eq!(shown.chars().count(), 256 + "...(truncated)...".len());
    assert_eq!(e.tool_calls[0].outcome.as_ref().unwrap().stdout.len(), 601);
}

#[test]
fn turn_limit_and_length_budget() {
    let c = RolloutConfig { max_turns: 2, ..config() };
    let (e, _) = run_one(&[&call("print(1)"), &call("print(2)"), &call("print(3)")], &c);
    assert_eq!((e.finish_reason, e.turns, e.tool_calls.len()), (FinishReason::MaxTurns, 2, 1));
    // A budget that ends inside the first turn: cut there, reward 0 even with an answer.
    let c = RolloutConfig { max_response_tokens: 12, ..config() };
    let (e, _) = run_one(&[" <answer>\\boxed{42}</answer> and much more text after it<|im_end|>"], &c);
    assert_eq!(e.finish_reason, FinishReason::Length);
    assert_eq!(e.loss_mask.len(), 12);
    assert_eq!(e.reward, Some(0.0));
    // A tool response that would not fit ends the rollout without appending it.
    let turn1 = call("print('y' * 200)");
    let n1 = tokenizer().encode(&turn1).len();
    let c = RolloutConfig { max_response_tokens: n1 + 20, ..config() };
    let (e, _) = run_one(&[&turn1, ANSWER_42], &c);
    assert_eq!(e.finish_reason, FinishReason::Length);
    assert_eq!(e.loss_mask.len(), n1);
    // No call and no answer.
    let (e, _) = run_one(&[" I do not know.<|im_end|>"], &config());
    assert_eq!((e.finish_reason, e.reward), (FinishReason::NoToolCall, Some(0.0)));
}

#[test]
fn engines_of_unequal_capacity_lose_nothing_and_never_overflow() {
    let tok = tokenizer();
    let end = tok.token_id("<|im_end|>").unwrap();
    let c = RolloutConfig { samples: 6, max_response_tokens: 150, ..config() };
    let requests: Vec<Request> = (0..5).map(|i| Request { id: format!("q{i}"), question: format!("What is {i} times 7?"), answer: Some((i * 7).to_string()) }).collect();
    let reserve = tok.encode(&c.chat.prompt("What is 0 times 7?")).len() + c.max_response_tokens;
    let scripts = || -> HashMap<u64, Vec<u32>> {
        (0..30u64)
            .map(|t| {
                let i = t / 6;
                let answer = format!(" So.</reason>\n<answer>\\boxed{{{}}}</answer><|im_end|>", i * 7);
                (t, script(&tok, &[&call(&format!("print({i}*7)")), &answer]))
            })
            .collect()
    };
    let capacities = [reserve, 2 * reserve + 5, 3 * reserve + 1];
    for dispatch in [ToolDispatch::Async, ToolDispatch::Lockstep] {
        // Every trajectory's script on every engine: where it runs is the scheduler's choice.
        let mut engines: Vec<ScriptedEngine> = capacities.iter().map(|&cap| ScriptedEngine::new(scripts(), end, tok.vocab_size(), cap)).collect();
        let c = RolloutConfig { dispatch, ..c.clone() };
        let out = generate(engines.iter_mut().map(|e| e as &mut dyn Engine).collect(), &tok, &sandbox(), &requests, &c, None).unwrap();
        assert_eq!(out.episodes.len(), 30);
        for (t, e) in out.episodes.iter().enumerate() {
            assert_eq!((e.id.as_str(), e.sample), (requests[t / 6].id.as_str(), t % 6));
            assert_eq!(e.reward, Some(1.0), "{dispatch:?} trajectory {t}: {}", e.text);
            // Sticky: every token of trajectory t went to the engine that finished it.
            for (i, engine) in engines.iter().enumerate() {
                assert_eq!(engine.fed.contains_key(&(t as u64)), i == e.engine, "trajectory {t} touched engine {i}");
            }
        }
        for (engine, &cap) in engines.iter().zip(&capacities) {
            assert!(engine.peak_used <= cap, "peak {} > capacity {cap}", engine.peak_used);
        }
        assert_eq!(out.metrics.engine_episodes.iter().sum::<usize>(), 30);
        assert!(out.metrics.engine_episodes.iter().all(|&n| n > 0), "{:?}", out.metrics.engine_episodes);
        assert_eq!(out.metrics.tool_calls, 30);
        assert_eq!(out.metrics.finish_reasons["answered"], 30);
    }
    // A trajectory that fits no engine is refused up front.
    let mut small = ScriptedEngine::new(HashMap::new(), end, tok.vocab_size(), reserve - 1);
    let err = generate(vec![&mut small as &mut dyn Engine], &tok, &sandbox(), &requests[..1], &c, None).unwrap_err();
    assert!(err.to_string().contains("largest engine holds"), "{err}");
}

#[test]
fn tiny_model_rollouts_record_the_trainers_logprobs() {
    let dir = root().join("models/tiny");
    let config = rstar2_model::Config::from_file(&dir.join("config.json")).unwrap();
    let model = rstar2_model::Model::new(config.clone(), rstar2_model::Params::random(&config, 3));
    let tok = tokenizer();
    let c = RolloutConfig { samples: 3, max_response_tokens: 24, seed: 9, ..config_default() };
    let requests: Vec<Request> = (0..3).map(|i| Request { id: format!("q{i}"), question: format!("What is {} times 13?", 100 + i), answer: Some("0".into()) }).collect();
    let mut engine = CpuEngine::new(&model, 4096);
    let out = generate(vec![&mut engine as &mut dyn Engine], &tok, &sandbox(), &requests, &c, None).unwrap();
    assert_eq!(out.episodes.len(), 9);
    for e in &out.episodes {
        assert_eq!(e.ids.len(), e.prompt_ids.len() + e.loss_mask.len());
        assert!(e.loss_mask.len() <= 24);
        // Recompute every model token's log-prob with the training forward (temperature 1).
        let batch = rstar2_model::Batch::new(std::slice::from_ref(&e.ids));
        let mut fwd = model.forward(&batch);
        let targets: Vec<u32> = e.ids[1..].iter().copied().chain([0]).collect();
        let lp = fwd.logprobs(&targets, config.vocab_size);
        for (i, (&m, &rollout_lp)) in e.loss_mask.iter().zip(&e.logprobs).enumerate() {
            if m == 1 {
                let trainer = lp[e.prompt_ids.len() - 1 + i];
                assert!((trainer - rollout_lp).abs() < 1e-3, "token {i}: trainer {trainer} vs rollout {rollout_lp}");
            }
        }
    }
    // Same seed, same episodes; also when prompts are prefilled 5 tokens per step.
    let ids = |g: &rstar2_rollout::Generated| g.episodes.iter().map(|e| e.ids.clone()).collect::<Vec<_>>();
    let mut engine = CpuEngine::new(&model, 4096);
    let again = generate(vec![&mut engine as &mut dyn Engine], &tok, &sandbox(), &requests, &c, None).unwrap();
    assert_eq!(ids(&again), ids(&out));
    let mut engine = CpuEngine::new(&model, 4096);
    let chunked = generate(vec![&mut engine as &mut dyn Engine], &tok, &sandbox(), &requests, &RolloutConfig { step_tokens: 5, ..c.clone() }, None).unwrap();
    assert_eq!(ids(&chunked), ids(&out));
}

/// Chunked prefill: with a step budget of 5 tokens, no step feeds more than the budget or the
/// decoding sequences plus one prefill token, and the episodes are those of one-step prefill.
#[test]
fn long_prompts_are_prefilled_in_chunks_within_the_step_budget() {
    let tok = tokenizer();
    let end = tok.token_id("<|im_end|>").unwrap();
    let requests: Vec<Request> =
        (0..6).map(|i| Request { id: format!("q{i}"), question: format!("What is {i} times 7, in a long question that takes many tokens to say?"), answer: Some((i * 7).to_string()) }).collect();
    let prompt_len = tok.encode(&config().chat.prompt(&requests[0].question)).len();
    assert!(prompt_len > 20, "prompt of {prompt_len} tokens");
    let scripts: HashMap<u64, Vec<u32>> =
        (0..6u64).map(|t| (t, script(&tok, &[&call(&format!("print({t}*7)")), &format!(" So.</reason>\n<answer>\\boxed{{{}}}</answer><|im_end|>", t * 7)]))).collect();
    let mut runs = Vec::new();
    for step_tokens in [10_000, 5] {
        let c = RolloutConfig { step_tokens, dispatch: ToolDispatch::Lockstep, ..config() };
        let mut engine = ScriptedEngine::new(scripts.clone(), end, tok.vocab_size(), 100_000);
        let out = generate(vec![&mut engine as &mut dyn Engine], &tok, &sandbox(), &requests, &c, None).unwrap();
        assert!(out.episodes.iter().all(|e| e.reward == Some(1.0)), "{:?}", out.episodes.iter().map(|e| &e.text).collect::<Vec<_>>());
        if step_tokens == 5 {
            assert!(engine.largest_step <= requests.len() + 1, "a step fed {} tokens", engine.largest_step);
        } else {
            assert!(engine.largest_step >= prompt_len, "prompts went in whole: largest step {}", engine.largest_step);
        }
        runs.push(out.episodes.into_iter().map(|e| e.text).collect::<Vec<_>>());
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(a, b);
    }
}

fn config_default() -> RolloutConfig {
    RolloutConfig { chat: ChatFormat { show_execution_time: false, ..ChatFormat::rstar2() }, ..RolloutConfig::default() }
}
