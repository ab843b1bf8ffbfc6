//! The generation loop: one thread per engine doing continuous batching, tool calls on the
//! sandbox, admission through the ledger.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rstar2_model::Tokenizer;
use rstar2_sandbox::{Sandbox, ToolCall, ToolResult};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::episode::{Episode, FinishReason};
use crate::sample::sample;
use crate::scheduler::Ledger;
use crate::trajectory::{Trajectory, TurnEnd};
use crate::{Request, RolloutConfig, RolloutError, ToolDispatch};

/// Called from engine threads after each finished episode, with the model tokens generated so
/// far over all engines.
pub type ProgressFn<'a> = &'a (dyn Fn(&Episode, usize) + Sync);

/// Episodes (in problem order, samples together) and the run's metrics.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `episodes[p * samples + s]` is sample s of problem p.
    pub episodes: Vec<Episode>,
    /// Throughput and behaviour.
    pub metrics: RolloutMetrics,
}

/// Figures of one `generate` call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutMetrics {
    /// Episodes produced.
    pub episodes: usize,
    /// Model-generated tokens.
    pub generated_tokens: usize,
    /// Tool-response tokens appended.
    pub tool_tokens: usize,
    /// Wall time.
    pub wall_seconds: f64,
    /// Generated tokens per second of wall time.
    pub tokens_per_second: f64,
    /// Tool calls executed or answered with an error.
    pub tool_calls: usize,
    /// Tool calls per second of wall time.
    pub tool_calls_per_second: f64,
    /// Summed time trajectories spent waiting for tool results.
    pub tool_wait_seconds: f64,
    /// Per engine: time-averaged share of its KV capacity reserved while it ran.
    pub engine_occupancy: Vec<f64>,
    /// Per engine: episodes it generated.
    pub engine_episodes: Vec<usize>,
    /// Episodes per finish reason.
    pub finish_reasons: BTreeMap<String, usize>,
    /// Mean tool calls per episode.
    pub calls_per_episode: f64,
    /// Mean failed tool calls per episode.
    pub errors_per_episode: f64,
}

struct Pending {
    traj: u64,
    request: usize,
    sample: usize,
    prompt: Arc<Vec<u32>>,
    reserve: usize,
}

enum Event {
    Admit(Pending),
    Tools { traj: u64, results: Vec<(usize, ToolResult)> },
}

struct Admission {
    pending: VecDeque<Pending>,
    ledger: Ledger,
}

struct Shared<'a> {
    admission: Mutex<Admission>,
    senders: Vec<Sender<Event>>,
    finished: Mutex<Vec<Option<Episode>>>,
    generated: AtomicUsize,
    abort: AtomicBool,
    requests: &'a [Request],
    config: &'a RolloutConfig,
    tokenizer: &'a Tokenizer,
    sandbox: &'a Sandbox,
    runtime: &'a tokio::runtime::Runtime,
    end_token: u32,
    progress: Option<ProgressFn<'a>>,
}

impl Shared<'_> {
    /// Admits waiting trajectories in order while the engine with the most room has room for
    /// the next one (`only`: consider that engine alone, for lockstep waves).
    fn admit(&self, only: Option<usize>) {
        let mut a = self.admission.lock().unwrap();
        while let Some(front) = a.pending.front() {
            let reserve = front.reserve;
            let engine = match only {
                None => a.ledger.acquire(reserve),
                Some(e) => a.ledger.acquire_on(e, reserve).then_some(e),
            };
            let Some(engine) = engine else { break };
            let p = a.pending.pop_front().unwrap();
            if self.senders[engine].send(Event::Admit(p)).is_err() {
                // The engine stopped (it failed); give the room back so nothing waits on it.
                a.ledger.release(engine, reserve);
                break;
            }
        }
    }

    fn queue_empty(&self) -> bool {
        self.admission.lock().unwrap().pending.is_empty()
    }
}

#[derive(PartialEq)]
enum State {
    Decoding,
    Waiting,
}

/// A trajectory on an engine: its bookkeeping, and where it is in this loop.
struct Traj {
    id: u64,
    request: usize,
    sample: usize,
    reserve: usize,
    core: Trajectory,
    /// Lockstep: calls waiting for the wave's batch (record index, call).
    queued: Vec<(usize, ToolCall)>,
    waiting_since: Instant,
    state: State,
}

#[derive(Default)]
struct EngineStats {
    tool_wait: Duration,
    tool_tokens: usize,
    occupancy_time: f64,
    busy_time: f64,
}

impl EngineStats {
    /// A model step that began at `start`, with `reserved` of `capacity` cache tokens reserved.
    fn count_step(&mut self, start: Instant, reserved: usize, capacity: usize) {
        let elapsed = start.elapsed().as_secs_f64();
        self.busy_time += elapsed;
        self.occupancy_time += elapsed * reserved as f64 / capacity.max(1) as f64;
    }
}

/// Generates `config.samples` episodes for every request on the given engines.
pub fn generate(
    engines: Vec<&mut dyn Engine>,
    tokenizer: &Tokenizer,
    sandbox: &Sandbox,
    requests: &[Request],
    config: &RolloutConfig,
    progress: Option<ProgressFn<'_>>,
) -> Result<Generated, RolloutError> {
    if engines.is_empty() {
        return Err(RolloutError::NoEngine);
    }
    let start = Instant::now();
    let end_token = tokenizer.token_id(&config.chat.end_of_turn).ok_or_else(|| RolloutError::MissingToken(config.chat.end_of_turn.clone()))?;
    let ledger = Ledger::new(engines.iter().map(|e| e.capacity()).collect());
    let longest = engines.iter().map(|e| e.max_sequence()).max().unwrap_or(0);
    let mut pending = VecDeque::new();
    for (r, request) in requests.iter().enumerate() {
        let prompt = Arc::new(tokenizer.encode(&config.chat.prompt(&request.question)));
        let reserve = prompt.len() + config.max_response_tokens;
        let largest = ledger.largest().min(longest);
        if reserve > largest {
            return Err(RolloutError::TooLarge { id: request.id.clone(), prompt: prompt.len(), budget: config.max_response_tokens, needed: reserve, largest });
        }
        for s in 0..config.samples {
            pending.push_back(Pending { traj: (r * config.samples + s) as u64, request: r, sample: s, prompt: prompt.clone(), reserve });
        }
    }
    let total = pending.len();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("rollout-tools").build().expect("tokio runtime");
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..engines.len()).map(|_| channel()).unzip();
    let shared = Shared {
        admission: Mutex::new(Admission { pending, ledger }),
        senders,
        finished: Mutex::new((0..total).map(|_| None).collect()),
        generated: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        requests,
        config,
        tokenizer,
        sandbox,
        runtime: &runtime,
        end_token,
        progress,
    };
    match config.dispatch {
        ToolDispatch::Async => shared.admit(None),
        ToolDispatch::Lockstep => (0..engines.len()).for_each(|e| shared.admit(Some(e))),
    }
    let engine_count = engines.len();
    let results: Vec<Result<EngineStats, RolloutError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(e, (engine, rx))| {
                let shared = &shared;
                scope.spawn(move || {
                    let out = engine_loop(e, engine, rx, shared);
                    if out.is_err() {
                        shared.abort.store(true, Ordering::SeqCst);
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().enumerate().map(|(e, h)| h.join().unwrap_or_else(|p| Err(RolloutError::EngineFailed(e, panic_message(p))))).collect()
    });
    let mut stats = Vec::with_capacity(engine_count);
    for r in results {
        stats.push(r?);
    }
    let episodes: Vec<Episode> = shared.finished.into_inner().unwrap().into_iter().map(|e| e.expect("every trajectory finishes")).collect();
    let wall = start.elapsed().as_secs_f64();
    let mut m = RolloutMetrics { episodes: episodes.len(), wall_seconds: wall, ..Default::default() };
    m.generated_tokens = episodes.iter().map(|e| e.model_tokens()).sum();
    m.tool_tokens = stats.iter().map(|s| s.tool_tokens).sum();
    m.tool_calls = episodes.iter().map(|e| e.tool_calls.len()).sum();
    m.tokens_per_second = m.generated_tokens as f64 / wall.max(1e-9);
    m.tool_calls_per_second = m.tool_calls as f64 / wall.max(1e-9);
    m.tool_wait_seconds = stats.iter().map(|s| s.tool_wait.as_secs_f64()).sum();
    m.engine_occupancy = stats.iter().map(|s| if s.busy_time > 0.0 { s.occupancy_time / s.busy_time } else { 0.0 }).collect();
    m.engine_episodes = (0..engine_count).map(|e| episodes.iter().filter(|ep| ep.engine == e).count()).collect();
    for reason in FinishReason::ALL {
        m.finish_reasons.insert(reason.as_str().into(), episodes.iter().filter(|e| e.finish_reason == reason).count());
    }
    let n = episodes.len().max(1) as f64;
    m.calls_per_episode = m.tool_calls as f64 / n;
    m.errors_per_episode = episodes.iter().map(|e| e.tool_usage().failed_tool_calls as f64).sum::<f64>() / n;
    Ok(Generated { episodes, metrics: m })
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into())
}

fn engine_loop(e: usize, engine: &mut dyn Engine, rx: Receiver<Event>, shared: &Shared<'_>) -> Result<EngineStats, RolloutError> {
    let config = shared.config;
    let lockstep = config.dispatch == ToolDispatch::Lockstep;
    let mut active: BTreeMap<u64, Traj> = BTreeMap::new();
    let mut stats = EngineStats::default();
    let mut reserved = 0usize;
    loop {
        if shared.abort.load(Ordering::SeqCst) {
            return Ok(stats);
        }
        while let Ok(event) = rx.try_recv() {
            handle_event(e, event, &mut active, &mut reserved, engine, shared, &mut stats);
        }
        let decoding: Vec<u64> = active.values().filter(|t| t.state == State::Decoding).map(|t| t.id).collect();
        if decoding.is_empty() {
            if lockstep && active.values().any(|t| !t.queued.is_empty()) {
                run_wave_calls(e, &mut active, &mut reserved, engine, shared, &mut stats);
                continue;
            }
            if active.is_empty() {
                if lockstep {
                    shared.admit(Some(e));
                    if let Ok(event) = rx.try_recv() {
                        handle_event(e, event, &mut active, &mut reserved, engine, shared, &mut stats);
                        continue;
                    }
                }
                if shared.queue_empty() {
                    return Ok(stats);
                }
            }
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(event) => handle_event(e, event, &mut active, &mut reserved, engine, shared, &mut stats),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(stats),
            }
            continue;
        }
        // Every sequence decoding (one pending token each): the engine may decode several steps
        // before anything comes back. Each sequence keeps what it would have kept step by step
        // (up to its stop or budget), consumes one uniform per kept token, and gives the
        // positions past its stop back to the engine.
        let budget_left = decoding.iter().map(|id| config.max_response_tokens.saturating_sub(active[id].core.response.len())).min().unwrap_or(0);
        let ahead = engine.lookahead(&config.sampling).min(budget_left);
        if ahead >= 2 && decoding.iter().all(|id| active[id].core.feed.len() == 1) {
            let tokens: Vec<u32> = decoding.iter().map(|id| active[id].core.feed[0]).collect();
            let uniforms: Vec<Vec<f64>> = if config.sampling.temperature > 0.0 {
                let mut rngs: Vec<ChaCha8Rng> = decoding.iter().map(|id| active[id].core.rng.clone()).collect();
                (0..ahead).map(|_| rngs.iter_mut().map(|r| r.random::<f64>()).collect()).collect()
            } else {
                vec![vec![0.0; decoding.len()]; ahead]
            };
            let step_start = Instant::now();
            let draws = engine.decode_ahead(&decoding, &tokens, &config.sampling, &uniforms)?;
            stats.count_step(step_start, reserved, engine.capacity());
            for (i, &id) in decoding.iter().enumerate() {
                let mut kept = 0;
                let mut stop = false;
                {
                    let t = active.get_mut(&id).unwrap();
                    for step in &draws {
                        if config.sampling.temperature > 0.0 {
                            t.core.rng.random::<f64>();
                        }
                        kept += 1;
                        if take_token(t, step[i], shared) {
                            stop = true;
                            break;
                        }
                    }
                }
                engine.unwind(id, ahead - kept);
                if stop {
                    end_turn(e, id, &mut active, &mut reserved, engine, shared, &mut stats);
                }
            }
            continue;
        }
        // Chunked prefill: sequences with one token to feed (decoding) all go in; longer feeds
        // (a prompt, a tool response) share what is left of the step's token budget, so a long
        // prompt never stalls the decoding sequences for a whole step. A sequence whose feed is
        // not consumed this step draws nothing.
        let mut room = config.step_tokens.max(1).saturating_sub(decoding.iter().filter(|id| active[*id].core.feed.len() == 1).count());
        let mut fed: Vec<(u64, usize)> = Vec::with_capacity(decoding.len());
        for &id in &decoding {
            let len = active[&id].core.feed.len();
            let take = if len == 1 { 1 } else { len.min(room.max(usize::from(fed.is_empty()))) };
            room = room.saturating_sub(if len == 1 { 0 } else { take });
            if take > 0 {
                fed.push((id, take));
            }
        }
        let ids: Vec<u64> = fed.iter().map(|&(id, _)| id).collect();
        let complete: Vec<bool> = fed.iter().map(|&(id, take)| take == active[&id].core.feed.len()).collect();
        let step_start = Instant::now();
        // On the device when the engine can (only the draws come back), each sequence's
        // generator supplying its uniform exactly as the host sampler would draw it.
        let draws: Vec<(u32, f32)> = if engine.samples_on_device(&config.sampling) {
            let uniforms: Vec<f64> =
                ids.iter().zip(&complete).map(|(id, &done)| if done && config.sampling.temperature > 0.0 { active.get_mut(id).unwrap().core.rng.random::<f64>() } else { 0.0 }).collect();
            let chunks: Vec<&[u32]> = fed.iter().map(|&(id, take)| &active[&id].core.feed[..take]).collect();
            engine.extend_sample(&ids, &chunks, &config.sampling, &uniforms)?
        } else {
            let chunks: Vec<&[u32]> = fed.iter().map(|&(id, take)| &active[&id].core.feed[..take]).collect();
            let logits = engine.extend(&ids, &chunks, &complete)?;
            ids.iter().zip(&complete).zip(logits).map(|((id, &done), l)| if done { sample(&l, &config.sampling, &mut active.get_mut(id).unwrap().core.rng) } else { (0, 0.0) }).collect()
        };
        stats.count_step(step_start, reserved, engine.capacity());
        for (((id, take), done), draw) in fed.into_iter().zip(complete).zip(draws) {
            let t = active.get_mut(&id).unwrap();
            t.core.feed.drain(..take);
            if done && take_token(t, draw, shared) {
                end_turn(e, id, &mut active, &mut reserved, engine, shared, &mut stats);
            }
        }
    }
}

/// A sampled (token, log-prob) joins the response; returns whether the turn ends with it.
fn take_token(t: &mut Traj, draw: (u32, f32), shared: &Shared<'_>) -> bool {
    shared.generated.fetch_add(1, Ordering::Relaxed);
    t.core.take_token(draw, shared.end_token, shared.config)
}

fn handle_event(e: usize, event: Event, active: &mut BTreeMap<u64, Traj>, reserved: &mut usize, engine: &mut dyn Engine, shared: &Shared<'_>, stats: &mut EngineStats) {
    match event {
        Event::Admit(p) => {
            *reserved += p.reserve;
            let core = Trajectory::new(p.prompt, shared.config, p.traj);
            active.insert(p.traj, Traj { id: p.traj, request: p.request, sample: p.sample, reserve: p.reserve, core, queued: Vec::new(), waiting_since: Instant::now(), state: State::Decoding });
        }
        Event::Tools { traj, results } => deliver(e, traj, results, active, reserved, engine, shared, stats),
    }
}

/// A turn ended (end token or budget): parse its calls and dispatch them, or finish.
fn end_turn(e: usize, id: u64, active: &mut BTreeMap<u64, Traj>, reserved: &mut usize, engine: &mut dyn Engine, shared: &Shared<'_>, stats: &mut EngineStats) {
    let config = shared.config;
    let t = active.get_mut(&id).unwrap();
    let to_run = match t.core.end_turn(shared.tokenizer, config) {
        TurnEnd::Finished(reason) => return finish(e, id, reason, active, reserved, engine, shared),
        TurnEnd::Calls(calls) => calls,
    };
    t.state = State::Waiting;
    t.waiting_since = Instant::now();
    if to_run.is_empty() {
        return deliver(e, id, Vec::new(), active, reserved, engine, shared, stats);
    }
    match config.dispatch {
        ToolDispatch::Lockstep => t.queued = to_run,
        ToolDispatch::Async => {
            let sandbox = shared.sandbox.clone();
            let tx = shared.senders[e].clone();
            shared.runtime.spawn(async move {
                let (indices, calls): (Vec<usize>, Vec<ToolCall>) = to_run.into_iter().unzip();
                let results = sandbox.run_batch(calls).await;
                let _ = tx.send(Event::Tools { traj: id, results: indices.into_iter().zip(results).collect() });
            });
        }
    }
}

/// Lockstep: every waiting trajectory's calls as one batch, then all responses.
fn run_wave_calls(e: usize, active: &mut BTreeMap<u64, Traj>, reserved: &mut usize, engine: &mut dyn Engine, shared: &Shared<'_>, stats: &mut EngineStats) {
    let mut owners = Vec::new();
    let mut calls = Vec::new();
    for t in active.values_mut() {
        for (index, call) in t.queued.drain(..) {
            owners.push((t.id, index));
            calls.push(call);
        }
    }
    let results = shared.runtime.block_on(shared.sandbox.run_batch(calls));
    let mut per_traj: BTreeMap<u64, Vec<(usize, ToolResult)>> = BTreeMap::new();
    for ((traj, index), result) in owners.into_iter().zip(results) {
        per_traj.entry(traj).or_default().push((index, result));
    }
    for (traj, results) in per_traj {
        deliver(e, traj, results, active, reserved, engine, shared, stats);
    }
}

/// Tool results arrived: show them to the model, or finish when they do not fit the budget.
#[allow(clippy::too_many_arguments)]
fn deliver(e: usize, id: u64, results: Vec<(usize, ToolResult)>, active: &mut BTreeMap<u64, Traj>, reserved: &mut usize, engine: &mut dyn Engine, shared: &Shared<'_>, stats: &mut EngineStats) {
    let Some(t) = active.get_mut(&id) else { return };
    stats.tool_wait += t.waiting_since.elapsed();
    match t.core.deliver(results, shared.tokenizer, shared.config) {
        Ok(tool_tokens) => stats.tool_tokens += tool_tokens,
        Err(reason) => return finish(e, id, reason, active, reserved, engine, shared),
    }
    t.state = State::Decoding;
}

fn finish(e: usize, id: u64, reason: FinishReason, active: &mut BTreeMap<u64, Traj>, reserved: &mut usize, engine: &mut dyn Engine, shared: &Shared<'_>) {
    let t = active.remove(&id).unwrap();
    engine.release(id);
    *reserved -= t.reserve;
    shared.admission.lock().unwrap().ledger.release(e, t.reserve);
    let episode = t.core.into_episode(&shared.requests[t.request], t.sample, e, reason, shared.tokenizer, shared.config);
    if let Some(progress) = shared.progress {
        progress(&episode, shared.generated.load(Ordering::Relaxed));
    }
    shared.finished.lock().unwrap()[id as usize] = Some(episode);
    if shared.config.dispatch == ToolDispatch::Async {
        shared.admit(None);
    }
}
