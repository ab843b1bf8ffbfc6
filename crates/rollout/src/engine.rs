//! Engines: what decodes. An engine owns a KV cache with a capacity in tokens and appends
//! chunks of tokens to sequences, returning the logits after each chunk's last token.

use std::collections::HashMap;

use rstar2_backend::Policy;
#[cfg(feature = "gpu")]
use rstar2_gpu::{GpuKvCache, GpuModel};
use rstar2_model::Model;
use rstar2_model::kv::{KvCache, SeqId};

use crate::RolloutError;
use crate::sample::SamplingConfig;

/// Something that can extend cached sequences and return next-token logits: a model on a
/// backend, or a scripted stand-in in tests.
pub trait Engine: Send {
    /// A name for logs and metrics.
    fn name(&self) -> String;
    /// KV capacity in tokens.
    fn capacity(&self) -> usize;
    /// Longest sequence (prompt + response) the engine can hold.
    fn max_sequence(&self) -> usize;
    /// Appends `chunks[i]` to sequence `seqs[i]` and returns the logits after each chunk; where
    /// `wanted[i]` is false (a prompt prefilled in parts, before its last part) the caller
    /// ignores them, and an engine may return an empty vector.
    fn extend(&mut self, seqs: &[SeqId], chunks: &[&[u32]], wanted: &[bool]) -> Result<Vec<Vec<f32>>, RolloutError>;
    /// Frees a finished sequence.
    fn release(&mut self, seq: SeqId);
    /// Whether [`Engine::extend_sample`] can draw with `config` on the engine's device.
    fn samples_on_device(&self, _config: &SamplingConfig) -> bool {
        false
    }
    /// Like [`Engine::extend`], then draws one token per sequence where the logits are, with
    /// `uniforms[i]` in [0, 1) drawn by the caller from the sequence's generator (ignored when
    /// greedy); returns (token, log-prob) pairs. Only called when `samples_on_device` says so.
    fn extend_sample(&mut self, _seqs: &[SeqId], _chunks: &[&[u32]], _config: &SamplingConfig, _uniforms: &[f64]) -> Result<Vec<(u32, f32)>, RolloutError> {
        unreachable!("extend_sample on an engine that does not sample on its device")
    }
    /// Steps [`Engine::decode_ahead`] may decode with `config` before anything comes back (1: the
    /// engine has no such path).
    fn lookahead(&self, _config: &SamplingConfig) -> usize {
        1
    }
    /// Decodes `uniforms.len()` steps of every sequence from its one pending token, each step's
    /// draws feeding the next step on the device; returns (token, log-prob) per step and
    /// sequence. The caller keeps what it would have kept step by step and gives the rest back
    /// with [`Engine::unwind`]. Only called when `lookahead` says so.
    fn decode_ahead(&mut self, _seqs: &[SeqId], _tokens: &[u32], _config: &SamplingConfig, _uniforms: &[Vec<f64>]) -> Result<Vec<Vec<(u32, f32)>>, RolloutError> {
        unreachable!("decode_ahead on an engine without look-ahead")
    }
    /// Drops the last `positions` cached positions of a sequence (decoded ahead past its stop).
    fn unwind(&mut self, _seq: SeqId, _positions: usize) {}
}

/// Steps a GPU engine decodes per read-back on a real GPU: a sequence that stops wastes at most
/// this many minus one, and the device does not wait for the host between them. On a software
/// adapter a step's arithmetic dwarfs the round trip, and delivering tool results a window late
/// costs more than it saves (measured on lavapipe: 454 -> 214 tok/s for the tiny model with
/// tools), so there the engine decodes one step per read-back.
pub const GPU_LOOKAHEAD: usize = 8;

/// The CPU backend of `rstar2-model` with its KV cache.
pub struct CpuEngine<'m> {
    model: &'m Model,
    cache: KvCache,
}

impl<'m> CpuEngine<'m> {
    /// An engine over `model` holding at most `capacity` cached tokens.
    pub fn new(model: &'m Model, capacity: usize) -> Self {
        CpuEngine { model, cache: KvCache::new(capacity) }
    }
}

impl Engine for CpuEngine<'_> {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    fn max_sequence(&self) -> usize {
        self.model.config.max_position_embeddings.min(1 << 16)
    }
    fn extend(&mut self, seqs: &[SeqId], chunks: &[&[u32]], _wanted: &[bool]) -> Result<Vec<Vec<f32>>, RolloutError> {
        Ok(self.model.extend(&mut self.cache, seqs, chunks)?)
    }
    fn release(&mut self, seq: SeqId) {
        self.cache.release(seq);
    }
}

/// The WGSL backend with its paged KV cache.
#[cfg(feature = "gpu")]
pub struct GpuEngine<'m> {
    model: &'m GpuModel,
    cache: GpuKvCache,
    lookahead: usize,
}

#[cfg(feature = "gpu")]
impl<'m> GpuEngine<'m> {
    /// An engine over `model` holding at most `capacity` cached tokens, decoding up to
    /// [`GPU_LOOKAHEAD`] steps per read-back on a real GPU, one on a software adapter.
    pub fn new(model: &'m GpuModel, capacity: usize) -> Self {
        let lookahead = if model.gpu.is_software() { 1 } else { GPU_LOOKAHEAD };
        GpuEngine { model, cache: GpuKvCache::new(model, capacity), lookahead }
    }

    /// Decodes at most `steps` steps per read-back (1: one step at a time).
    pub fn with_lookahead(mut self, steps: usize) -> Self {
        self.lookahead = steps.max(1);
        self
    }
}

#[cfg(feature = "gpu")]
impl Engine for GpuEngine<'_> {
    fn name(&self) -> String {
        format!("gpu ({})", self.model.gpu.info.name)
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    fn max_sequence(&self) -> usize {
        self.model.config.max_position_embeddings.min(1 << 16)
    }
    fn extend(&mut self, seqs: &[SeqId], chunks: &[&[u32]], _wanted: &[bool]) -> Result<Vec<Vec<f32>>, RolloutError> {
        Ok(self.model.extend(&mut self.cache, seqs, chunks)?)
    }
    fn release(&mut self, seq: SeqId) {
        self.cache.release(seq);
    }
    /// Temperature sampling and greedy run on the device (only the draws are read back);
    /// top-k and top-p need the sorted distribution and are left to the host.
    fn samples_on_device(&self, config: &SamplingConfig) -> bool {
        config.top_k == 0 && config.top_p >= 1.0
    }
    fn extend_sample(&mut self, seqs: &[SeqId], chunks: &[&[u32]], config: &SamplingConfig, uniforms: &[f64]) -> Result<Vec<(u32, f32)>, RolloutError> {
        let u: Vec<f32> = uniforms.iter().map(|&x| x as f32).collect();
        Ok(self.model.extend_sample(&mut self.cache, seqs, chunks, config.temperature, &u)?)
    }
    fn lookahead(&self, config: &SamplingConfig) -> usize {
        if self.samples_on_device(config) { self.lookahead } else { 1 }
    }
    fn decode_ahead(&mut self, seqs: &[SeqId], tokens: &[u32], config: &SamplingConfig, uniforms: &[Vec<f64>]) -> Result<Vec<Vec<(u32, f32)>>, RolloutError> {
        let u: Vec<Vec<f32>> = uniforms.iter().map(|s| s.iter().map(|&x| x as f32).collect()).collect();
        Ok(self.model.decode_ahead(&mut self.cache, seqs, tokens, u.len(), config.temperature, &u)?)
    }
    fn unwind(&mut self, seq: SeqId, positions: usize) {
        self.cache.unwind(seq, positions);
    }
}

/// An engine for a policy on whichever backend it lives.
pub fn policy_engine(policy: &Policy, capacity: usize) -> Box<dyn Engine + '_> {
    match policy {
        Policy::Cpu { model, .. } => Box::new(CpuEngine::new(model, capacity)),
        #[cfg(feature = "gpu")]
        Policy::Gpu { model, .. } => Box::new(GpuEngine::new(model, capacity)),
    }
}

/// A stand-in model that emits given token sequences: sequence `s` produces `scripts[s]`
/// token by token (logits one-hot at the scripted token), then `fallback` forever. It counts
/// cached tokens against its capacity exactly like a real cache, and remembers the peak.
pub struct ScriptedEngine {
    scripts: HashMap<SeqId, Vec<u32>>,
    emitted: HashMap<SeqId, usize>,
    cached: HashMap<SeqId, usize>,
    fallback: u32,
    vocab: usize,
    capacity: usize,
    /// Highest number of cached tokens seen.
    pub peak_used: usize,
    /// Most tokens fed in one step.
    pub largest_step: usize,
    /// Every chunk received, in order, per sequence (to check what was fed back).
    pub fed: HashMap<SeqId, Vec<u32>>,
}

impl ScriptedEngine {
    /// An engine whose sequence `s` emits `scripts[&s]`.
    pub fn new(scripts: HashMap<SeqId, Vec<u32>>, fallback: u32, vocab: usize, capacity: usize) -> Self {
        ScriptedEngine { scripts, emitted: HashMap::new(), cached: HashMap::new(), fallback, vocab, capacity, peak_used: 0, largest_step: 0, fed: HashMap::new() }
    }
}

impl Engine for ScriptedEngine {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn max_sequence(&self) -> usize {
        usize::MAX
    }
    fn extend(&mut self, seqs: &[SeqId], chunks: &[&[u32]], wanted: &[bool]) -> Result<Vec<Vec<f32>>, RolloutError> {
        let needed: usize = chunks.iter().map(|c| c.len()).sum();
        let used: usize = self.cached.values().sum();
        if used + needed > self.capacity {
            return Err(RolloutError::Kv(rstar2_model::kv::KvError::Full { needed, free: self.capacity - used, capacity: self.capacity }));
        }
        self.peak_used = self.peak_used.max(used + needed);
        self.largest_step = self.largest_step.max(needed);
        let mut out = Vec::with_capacity(seqs.len());
        for ((&s, c), &want) in seqs.iter().zip(chunks).zip(wanted) {
            *self.cached.entry(s).or_default() += c.len();
            self.fed.entry(s).or_default().extend_from_slice(c);
            // A policy speaks when asked: the script moves on only for wanted logits.
            if !want {
                out.push(Vec::new());
                continue;
            }
            let i = self.emitted.entry(s).or_default();
            let token = self.scripts.get(&s).and_then(|t| t.get(*i)).copied().unwrap_or(self.fallback);
            *i += 1;
            let mut logits = vec![-30.0; self.vocab];
            logits[token as usize] = 30.0;
            out.push(logits);
        }
        Ok(out)
    }
    fn release(&mut self, seq: SeqId) {
        self.cached.remove(&seq);
    }
}
