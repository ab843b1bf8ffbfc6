//! Inference with a KV cache: prefill, incremental decoding and appending tokens (a tool
//! response) to a sequence's cache without recomputing its prefix, for a batch of sequences of
//! different lengths. The cache's capacity in tokens is fixed up front, so a scheduler can
//! reserve against it.

use std::collections::HashMap;

use half::bf16;

use crate::model::Model;
use crate::ops::attention::{Heads, KvElem, attention_decode, write_key, write_value};
use crate::ops::embedding::embedding_forward;
use crate::ops::gemv::DecodeWeights;
use crate::ops::matmul::{linear_forward_packed, linear_forward_stacked};
use crate::ops::rmsnorm::rmsnorm_forward;
use crate::ops::rope::rope_forward;
use crate::ops::swiglu::swiglu_forward;

/// Identifies a sequence in a [`KvCache`].
pub type SeqId = u64;

/// Why tokens could not be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The cache has no room for the tokens.
    #[error("KV cache full: {needed} more tokens needed, {free} of {capacity} free")]
    Full {
        /// Tokens asked for.
        needed: usize,
        /// Tokens free.
        free: usize,
        /// Total capacity.
        capacity: usize,
    },
    /// The sequence would pass the model's longest position.
    #[error("sequence {seq} would reach position {position}, beyond the model's {max}")]
    TooLong {
        /// The sequence.
        seq: SeqId,
        /// The position it would reach.
        position: usize,
        /// The maximum.
        max: usize,
    },
}

struct SeqCache<T> {
    /// Per layer: keys (after RoPE, in the blocked layout of `write_key`) and values (rows of
    /// `kv_heads * head_dim`).
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    len: usize,
}

/// The sequences, all in one element type.
enum Store {
    F32(HashMap<SeqId, SeqCache<f32>>),
    Bf16(HashMap<SeqId, SeqCache<bf16>>),
}

/// Runs `$body` with `$m` bound to the store's map, whichever its element type.
macro_rules! on_store {
    ($store:expr, $m:ident => $body:expr) => {
        match $store {
            Store::F32($m) => $body,
            Store::Bf16($m) => $body,
        }
    };
}

/// Keys and values of many sequences, with a capacity in tokens. The element type follows the
/// model ([`Model::kv_cache_bf16`]), chosen when the cache holds no sequence.
pub struct KvCache {
    capacity: usize,
    used: usize,
    store: Store,
}

impl KvCache {
    /// An empty cache holding at most `capacity` tokens over all sequences.
    pub fn new(capacity: usize) -> Self {
        KvCache { capacity, used: 0, store: Store::F32(HashMap::new()) }
    }

    /// The capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens held.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Tokens cached for `seq` (0 if unknown).
    pub fn len(&self, seq: SeqId) -> usize {
        on_store!(&self.store, m => m.get(&seq).map_or(0, |s| s.len))
    }

    /// Whether no sequence is cached.
    pub fn is_empty(&self) -> bool {
        on_store!(&self.store, m => m.is_empty())
    }

    /// Frees a sequence's tokens.
    pub fn release(&mut self, seq: SeqId) {
        if let Some(len) = on_store!(&mut self.store, m => m.remove(&seq).map(|s| s.len)) {
            self.used -= len;
        }
    }

    /// Bytes one cached token takes (keys and values of every layer, f32 or bf16 as
    /// [`Model::kv_cache_bf16`] says).
    pub fn bytes_per_token(model: &Model) -> usize {
        let element = if model.kv_cache_bf16() { 2 } else { 4 };
        2 * model.config.num_hidden_layers * model.config.kv_heads() * model.config.head_dim() * element
    }

    /// Whether keys and values are held in bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.store, Store::Bf16(_))
    }
}

/// Layer `l`'s new keys and values (rows `k`, `vv`, of the sequences `owners` at `positions`)
/// into the cache, then each row's query in `q` against its sequence's cache up to its position.
#[allow(clippy::too_many_arguments)]
fn cache_and_attend<T: KvElem>(map: &mut HashMap<SeqId, SeqCache<T>>, l: usize, owners: &[SeqId], positions: &[usize], k: &[f32], vv: &[f32], q: &[f32], att: &mut [f32], heads: Heads) {
    let kd = heads.kv * heads.dim;
    for (r, (s, &pos)) in owners.iter().zip(positions).enumerate() {
        let sc = map.get_mut(s).expect("inserted before the layers");
        write_key(&mut sc.k[l], &k[r * kd..(r + 1) * kd], pos);
        write_value(&mut sc.v[l], &vv[r * kd..(r + 1) * kd]);
    }
    let views: Vec<(&[T], &[T], usize)> = owners
        .iter()
        .zip(positions)
        .map(|(s, &pos)| {
            let sc = &map[s];
            (sc.k[l].as_slice(), sc.v[l].as_slice(), pos + 1)
        })
        .collect();
    attention_decode(att, q, &views, heads);
}

impl Model {
    /// Whether cached inference keeps keys and values in bf16: with bf16 decode weights (as
    /// this CPU stores them: [`DecodeWeights::on_this_cpu`]), as vLLM keeps a bf16 model's cache
    /// in bf16; else f32, so f32 and f16 decoding attend exactly as the training forward does.
    pub fn kv_cache_bf16(&self) -> bool {
        self.decode_weights().map(DecodeWeights::on_this_cpu) == Some(DecodeWeights::Bf16)
    }

    /// Appends `chunks[b]` to sequence `seqs[b]`'s cache (creating it if new) and returns, for
    /// each chunk, the logits [V] after its last token. One forward over all new tokens of all
    /// sequences; each attends to its own sequence's cached prefix. Chunks must be non-empty.
    pub fn extend(&self, cache: &mut KvCache, seqs: &[SeqId], chunks: &[&[u32]]) -> Result<Vec<Vec<f32>>, KvError> {
        crate::cpu::on_pool(|| self.extend_here(cache, seqs, chunks))
    }

    fn extend_here(&self, cache: &mut KvCache, seqs: &[SeqId], chunks: &[&[u32]]) -> Result<Vec<Vec<f32>>, KvError> {
        assert_eq!(seqs.len(), chunks.len(), "extend: {} sequences, {} chunks", seqs.len(), chunks.len());
        assert!(chunks.iter().all(|c| !c.is_empty()), "extend: empty chunk");
        let needed: usize = chunks.iter().map(|c| c.len()).sum();
        if cache.used + needed > cache.capacity {
            return Err(KvError::Full { needed, free: cache.capacity - cache.used, capacity: cache.capacity });
        }
        for (&s, c) in seqs.iter().zip(chunks) {
            let position = cache.len(s) + c.len();
            if position > self.rope.max_pos() {
                return Err(KvError::TooLong { seq: s, position, max: self.rope.max_pos() });
            }
        }
        let c = &self.config;
        let heads = self.heads();
        let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let eps = c.rms_norm_eps as f32;
        let n = needed;
        let tokens: Vec<u32> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        // Row r belongs to chunk owner[r] and sits at absolute position positions[r].
        let mut owner = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        for (b, (&s, ch)) in seqs.iter().zip(chunks).enumerate() {
            let past = cache.len(s);
            for i in 0..ch.len() {
                owner.push(b);
                positions.push(past + i);
            }
        }
        let layers = self.config.num_hidden_layers;
        if cache.is_empty() && cache.is_bf16() != self.kv_cache_bf16() {
            cache.store = if self.kv_cache_bf16() { Store::Bf16(HashMap::new()) } else { Store::F32(HashMap::new()) };
        }
        on_store!(&mut cache.store, m => for &s in seqs {
            m.entry(s).or_insert_with(|| SeqCache { k: vec![Vec::new(); layers], v: vec![Vec::new(); layers], len: 0 });
        });
        let owners: Vec<SeqId> = owner.iter().map(|&b| seqs[b]).collect();
        let mut x = vec![0.0; n * d];
        embedding_forward(&mut x, &tokens, &self.params.data[self.wte], d);
        let (mut h, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
        let (mut q, mut k, mut vv) = (vec![0.0; n * qd], vec![0.0; n * kd], vec![0.0; n * kd]);
        let mut att = vec![0.0; n * qd];
        let mut o = vec![0.0; n * d];
        let (mut gate, mut up, mut act) = (vec![0.0; n * f], vec![0.0; n * f], vec![0.0; n * f]);
        let mut stacked = Vec::new();
        let w = |i: usize| self.params.data[i].as_slice();
        let wo = |i: Option<usize>| i.map(|i| self.params.data[i].as_slice());
        let hw = |i: usize| self.packed_weight(i);
        for (l, li) in self.layers.iter().enumerate() {
            rmsnorm_forward(&mut h, &mut rstd, &x, w(li.ln1), d, eps);
            linear_forward_stacked(&mut [&mut q, &mut k, &mut vv], &h, &[w(li.q), w(li.k), w(li.v)], hw(li.q), &[wo(li.qb), wo(li.kb), wo(li.vb)], n, d, &mut stacked);
            if let (Some(qn), Some(kn)) = (li.qn, li.kn) {
                let (qr, kr) = (q.clone(), k.clone());
                let (mut rq, mut rk) = (vec![0.0; n * heads.q], vec![0.0; n * heads.kv]);
                rmsnorm_forward(&mut q, &mut rq, &qr, w(qn), heads.dim, eps);
                rmsnorm_forward(&mut k, &mut rk, &kr, w(kn), heads.dim, eps);
            }
            rope_forward(&mut q, &positions, &self.rope, heads.q);
            rope_forward(&mut k, &positions, &self.rope, heads.kv);
            on_store!(&mut cache.store, m => cache_and_attend(m, l, &owners, &positions, &k, &vv, &q, &mut att, heads));
            linear_forward_packed(&mut o, &att, w(li.o), hw(li.o), wo(li.ob), n, qd, d);
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }
            rmsnorm_forward(&mut h, &mut rstd, &x, w(li.ln2), d, eps);
            linear_forward_stacked(&mut [&mut gate, &mut up], &h, &[w(li.gate), w(li.up)], hw(li.gate), &[None, None], n, d, &mut stacked);
            swiglu_forward(&mut act, &gate, &up);
            linear_forward_packed(&mut o, &act, w(li.down), hw(li.down), None, n, f, d);
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }
        }
        on_store!(&mut cache.store, m => for (s, ch) in seqs.iter().zip(chunks) {
            m.get_mut(s).expect("inserted before the layers").len += ch.len();
        });
        cache.used += n;
        // Final norm and logits only for each chunk's last row.
        let mut last_rows = Vec::with_capacity(seqs.len() * d);
        let mut end = 0;
        for ch in chunks {
            end += ch.len();
            last_rows.extend_from_slice(&x[(end - 1) * d..end * d]);
        }
        let b = seqs.len();
        let (mut hf, mut rf) = (vec![0.0; b * d], vec![0.0; b]);
        rmsnorm_forward(&mut hf, &mut rf, &last_rows, w(self.norm), d, eps);
        let mut logits = vec![0.0; b * v];
        linear_forward_packed(&mut logits, &hf, w(self.lm_head), hw(self.lm_head), None, b, d, v);
        Ok(logits.chunks_exact(v).map(<[f32]>::to_vec).collect())
    }
}
