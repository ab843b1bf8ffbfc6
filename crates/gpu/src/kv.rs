//! Cached inference on the device: prefill, decoding and appended tool responses for a batch of
//! sequences of different lengths, keys and values in a paged cache (blocks of 16 positions from
//! a free list, one block table per sequence), so no sequence's cache is ever copied or moved.

use std::collections::HashMap;

use rstar2_model::{KvError, SeqId};

use crate::model::GpuModel;
use crate::ops;
use crate::tensor::Tensor;

pub(crate) const BLOCK: usize = 16;

/// A step's rows on the device: slot, position, visible length and block-table offset per row,
/// and the block tables.
struct StepPlan {
    rows: usize,
    /// The longest row's context.
    max_len: usize,
    slots: Tensor,
    positions: Tensor,
    lens: Tensor,
    table_off: Tensor,
    table: Tensor,
}

struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
}

/// A KV cache with a fixed capacity in tokens, like `rstar2_model::KvCache`, on the device.
pub struct GpuKvCache {
    capacity: usize,
    used: usize,
    free: Vec<u32>,
    seqs: HashMap<SeqId, SeqBlocks>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl GpuKvCache {
    /// Tokens of cache `model`'s device holds: what one storage binding per layer holds in
    /// blocks, less 256 blocks of headroom.
    pub fn token_budget(model: &GpuModel) -> usize {
        let width = model.config.kv_heads() * model.config.head_dim();
        let blocks = (model.gpu.binding_limit() as usize / (width * 4 * BLOCK).max(1)).saturating_sub(256);
        blocks * BLOCK
    }

    /// Room for `capacity` tokens over all sequences. Blocks are 16 positions; one partly used
    /// block per sequence is allowed for on top (up to 256 sequences at once).
    pub fn new(model: &GpuModel, capacity: usize) -> Self {
        let blocks = capacity.div_ceil(BLOCK) + 256;
        let width = model.heads.kv * model.heads.dim;
        let layers = model.config.num_hidden_layers;
        let bytes = (blocks * BLOCK * width * 4) as u64;
        assert!(
            bytes <= model.gpu.binding_limit(),
            "a KV cache of {capacity} tokens needs {bytes} bytes per layer, over this adapter's {} byte storage binding: use a smaller capacity or several engines",
            model.gpu.binding_limit()
        );
        let k = (0..layers).map(|_| model.gpu.alloc(blocks * BLOCK * width)).collect();
        let v = (0..layers).map(|_| model.gpu.alloc(blocks * BLOCK * width)).collect();
        GpuKvCache { capacity, used: 0, free: (0..blocks as u32).rev().collect(), seqs: HashMap::new(), k, v }
    }

    /// Capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens held.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Tokens cached for `seq` (0 if unknown).
    pub fn len(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    /// Whether no sequence is cached.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Drops the last `positions` cached positions of a sequence (decoded ahead past its stop),
    /// and the blocks no longer needed.
    pub fn unwind(&mut self, seq: SeqId, positions: usize) {
        if let Some(s) = self.seqs.get_mut(&seq) {
            let drop = positions.min(s.len);
            s.len -= drop;
            self.used -= drop;
            while s.blocks.len() * BLOCK >= s.len + BLOCK {
                self.free.push(s.blocks.pop().expect("a block beyond the length"));
            }
        }
    }

    /// Frees a sequence's blocks.
    pub fn release(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            self.used -= s.len;
            self.free.extend(s.blocks);
        }
    }
}

impl GpuModel {
    /// Appends `chunks[b]` to sequence `seqs[b]`'s cache (creating it if new) and returns the
    /// logits of each chunk's last token; same contract as `rstar2_model::Model::extend`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn extend(&self, cache: &mut GpuKvCache, seqs: &[SeqId], chunks: &[&[u32]]) -> Result<Vec<Vec<f32>>, KvError> {
        crate::block_on(self.extend_async(cache, seqs, chunks))
    }

    /// [`Self::extend`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn extend_async(&self, cache: &mut GpuKvCache, seqs: &[SeqId], chunks: &[&[u32]]) -> Result<Vec<Vec<f32>>, KvError> {
        let logits = self.extend_on_device(cache, seqs, chunks)?;
        let v = self.config.vocab_size;
        Ok(self.gpu.read_async(&logits).await.chunks_exact(v).map(<[f32]>::to_vec).collect())
    }

    /// [`GpuModel::extend`], then one draw per chunk from softmax(logits / temperature) with the
    /// given uniform in [0, 1) (greedy when temperature <= 0): only the tokens and their
    /// log-probabilities come back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn extend_sample(&self, cache: &mut GpuKvCache, seqs: &[SeqId], chunks: &[&[u32]], temperature: f32, uniforms: &[f32]) -> Result<Vec<(u32, f32)>, KvError> {
        crate::block_on(self.extend_sample_async(cache, seqs, chunks, temperature, uniforms))
    }

    /// [`Self::extend_sample`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn extend_sample_async(&self, cache: &mut GpuKvCache, seqs: &[SeqId], chunks: &[&[u32]], temperature: f32, uniforms: &[f32]) -> Result<Vec<(u32, f32)>, KvError> {
        assert_eq!(uniforms.len(), seqs.len(), "extend_sample: one uniform per sequence");
        let logits = self.extend_on_device(cache, seqs, chunks)?;
        let gpu = &*self.gpu;
        let (out, u) = (gpu.alloc(2 * seqs.len()), gpu.upload(uniforms));
        crate::ops::sample(gpu, &out, &logits, &u, seqs.len(), self.config.vocab_size, temperature);
        Ok(gpu.read_u32_async(&out).await.chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect())
    }

    /// [`GpuModel::extend`] without the read-back: logits [chunks, V] stay on the device.
    pub fn extend_on_device(&self, cache: &mut GpuKvCache, seqs: &[SeqId], chunks: &[&[u32]]) -> Result<Tensor, KvError> {
        assert_eq!(seqs.len(), chunks.len(), "extend: {} sequences, {} chunks", seqs.len(), chunks.len());
        assert!(chunks.iter().all(|c| !c.is_empty()), "extend: empty chunk");
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        let plan = self.plan(cache, seqs, &lens)?;
        let tokens: Vec<u32> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let ids = self.gpu.upload_u32(&tokens);
        Ok(self.run_cached(cache, &ids, 1, &plan, &lens))
    }

    /// Decodes `steps` tokens of every sequence without reading anything back between steps:
    /// from each sequence's pending token, each step samples on the device (with
    /// `uniforms[step][i]`, greedy when temperature <= 0) and the sampled tokens are the next
    /// step's input on the device. One read-back at the end brings (token, log-prob) for every
    /// step and sequence. Sequences that would have stopped earlier have decoded past their
    /// stop: [`GpuKvCache::unwind`] drops those positions.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_ahead(&self, cache: &mut GpuKvCache, seqs: &[SeqId], tokens: &[u32], steps: usize, temperature: f32, uniforms: &[Vec<f32>]) -> Result<Vec<Vec<(u32, f32)>>, KvError> {
        crate::block_on(self.decode_ahead_async(cache, seqs, tokens, steps, temperature, uniforms))
    }

    /// [`Self::decode_ahead`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn decode_ahead_async(&self, cache: &mut GpuKvCache, seqs: &[SeqId], tokens: &[u32], steps: usize, temperature: f32, uniforms: &[Vec<f32>]) -> Result<Vec<Vec<(u32, f32)>>, KvError> {
        let b = seqs.len();
        assert!(tokens.len() == b && uniforms.len() == steps && uniforms.iter().all(|u| u.len() == b), "decode_ahead: one token per sequence, one uniform per sequence and step");
        if cache.used + b * steps > cache.capacity {
            return Err(KvError::Full { needed: b * steps, free: cache.capacity - cache.used, capacity: cache.capacity });
        }
        let gpu = &*self.gpu;
        let ones = vec![1usize; b];
        let all = gpu.alloc(2 * b * steps);
        let mut prev: Option<Tensor> = None;
        for (step, u) in uniforms.iter().enumerate() {
            let plan = self.plan(cache, seqs, &ones)?;
            let logits = match &prev {
                None => self.run_cached(cache, &gpu.upload_u32(tokens), 1, &plan, &ones),
                // The previous step's draws, read in place: out[2i] is sequence i's token.
                Some(out) => self.run_cached(cache, out, 2, &plan, &ones),
            };
            let out = gpu.alloc(2 * b);
            ops::sample(gpu, &out, &logits, &gpu.upload(u), b, self.config.vocab_size, temperature);
            gpu.copy_range(&out, 0, &all, 2 * b * step, 2 * b);
            prev = Some(out);
        }
        let got = gpu.read_u32_async(&all).await;
        Ok(got.chunks_exact(2 * b).map(|s| s.chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect()).collect())
    }

    /// Blocks for `lens[i]` new positions of each sequence, and the per-row tables of the step.
    fn plan(&self, cache: &mut GpuKvCache, seqs: &[SeqId], lens: &[usize]) -> Result<StepPlan, KvError> {
        let needed: usize = lens.iter().sum();
        if cache.used + needed > cache.capacity {
            return Err(KvError::Full { needed, free: cache.capacity - cache.used, capacity: cache.capacity });
        }
        for (&s, &n) in seqs.iter().zip(lens) {
            let position = cache.len(s) + n;
            if position > self.max_pos {
                return Err(KvError::TooLong { seq: s, position, max: self.max_pos });
            }
        }
        // Per row: its slot, its position, how many cached positions it sees, and where its
        // sequence's block table starts.
        let (mut slots, mut positions, mut row_lens, mut table_off) = (Vec::with_capacity(needed), Vec::with_capacity(needed), Vec::with_capacity(needed), Vec::with_capacity(needed));
        let mut table: Vec<u32> = Vec::new();
        for (&s, &n) in seqs.iter().zip(lens) {
            let entry = cache.seqs.entry(s).or_insert_with(|| SeqBlocks { blocks: Vec::new(), len: 0 });
            let new_len = entry.len + n;
            while entry.blocks.len() * BLOCK < new_len {
                let b = cache.free.pop().expect("block pool sized for the token capacity");
                entry.blocks.push(b);
            }
            let off = table.len() as u32;
            table.extend_from_slice(&entry.blocks);
            for p in entry.len..new_len {
                slots.push(entry.blocks[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32);
                positions.push(p as u32);
                row_lens.push(p as u32 + 1);
                table_off.push(off);
            }
            entry.len = new_len;
        }
        cache.used += needed;
        let gpu = &*self.gpu;
        Ok(StepPlan {
            rows: needed,
            max_len: row_lens.iter().max().map_or(0, |&l| l as usize),
            slots: gpu.upload_u32(&slots),
            positions: gpu.upload_u32(&positions),
            lens: gpu.upload_u32(&row_lens),
            table_off: gpu.upload_u32(&table_off),
            table: gpu.upload_u32(&table),
        })
    }

    /// The layers over a step's rows (token ids `ids[r * id_stride]`), keys and values into the
    /// cache; returns the logits [chunks, V] after each chunk's last row (`lens`: chunk lengths).
    fn run_cached(&self, cache: &GpuKvCache, ids: &Tensor, id_stride: usize, plan: &StepPlan, lens: &[usize]) -> Tensor {
        let gpu = &*self.gpu;
        let c = &self.config;
        let heads = self.heads;
        let (n, d, f, v) = (plan.rows, c.hidden_size, c.intermediate_size, c.vocab_size);
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let eps = c.rms_norm_eps as f32;
        let StepPlan { slots, positions, lens: row_lens, table_off, table, max_len, .. } = plan;
        let lens_t = row_lens;
        let w = |i: usize| &self.params[i];
        let wo = |i: Option<usize>| i.map(|i| &self.params[i]);
        let lw = |i: usize| self.linear_weight(i);
        let x = gpu.alloc(n * d);
        ops::embedding_forward_strided(gpu, &x, ids, id_stride, w(self.wte), n, d);
        let (h, rstd) = (gpu.alloc(n * d), gpu.alloc(n));
        let att = gpu.alloc(n * qd);
        if self.fused_decode(n) {
            // Eight dispatches a layer: norm, q/k/v, RoPE + cache write, attention, o + residual,
            // norm, gate/up + SwiGLU, down + residual.
            let (qkv, q, act) = (gpu.alloc(n * (qd + 2 * kd)), gpu.alloc(n * qd), gpu.alloc(n * f));
            for (l, li) in self.layers.iter().enumerate() {
                ops::rmsnorm_forward(gpu, &h, &rstd, &x, w(li.ln1), n, d, eps);
                let biases = match (li.qb, li.kb, li.vb) {
                    (Some(a), Some(b), Some(c)) => Some([w(a), w(b), w(c)]),
                    _ => None,
                };
                ops::decode_qkv(gpu, &qkv, &h, [lw(li.q), lw(li.k), lw(li.v)], biases, n, d, qd, kd);
                let qk_norm = li.qn.zip(li.kn).map(|(a, b)| (w(a), w(b)));
                ops::decode_rope_kv(gpu, &q, &cache.k[l], &cache.v[l], &qkv, positions, slots, &self.rope, qk_norm, n, heads, eps);
                ops::attention_decode(gpu, &att, &q, &cache.k[l], &cache.v[l], table, table_off, lens_t, n, *max_len, heads);
                ops::decode_linear(gpu, &x, &att, lw(li.o), wo(li.ob), n, d, qd, true);
                ops::rmsnorm_forward(gpu, &h, &rstd, &x, w(li.ln2), n, d, eps);
                ops::decode_gate_up(gpu, &act, &h, lw(li.gate), lw(li.up), n, f, d);
                ops::decode_linear(gpu, &x, &act, lw(li.down), None, n, d, f, true);
            }
        } else {
            let (q, k, vv) = (gpu.alloc(n * qd), gpu.alloc(n * kd), gpu.alloc(n * kd));
            let (o, x2) = (gpu.alloc(n * d), gpu.alloc(n * d));
            let (gate, up, act) = (gpu.alloc(n * f), gpu.alloc(n * f), gpu.alloc(n * f));
            for (l, li) in self.layers.iter().enumerate() {
                ops::rmsnorm_forward(gpu, &h, &rstd, &x, w(li.ln1), n, d, eps);
                ops::linear_forward(gpu, &q, &h, lw(li.q), wo(li.qb), n, d, qd);
                ops::linear_forward(gpu, &k, &h, lw(li.k), wo(li.kb), n, d, kd);
                ops::linear_forward(gpu, &vv, &h, lw(li.v), wo(li.vb), n, d, kd);
                let normed;
                let (q, k) = match (li.qn, li.kn) {
                    (Some(qn), Some(kn)) => {
                        let (qo, ko, rq, rk) = (gpu.alloc(n * qd), gpu.alloc(n * kd), gpu.alloc(n * heads.q), gpu.alloc(n * heads.kv));
                        ops::rmsnorm_forward(gpu, &qo, &rq, &q, w(qn), n * heads.q, heads.dim, eps);
                        ops::rmsnorm_forward(gpu, &ko, &rk, &k, w(kn), n * heads.kv, heads.dim, eps);
                        normed = (qo, ko);
                        (&normed.0, &normed.1)
                    }
                    _ => (&q, &k),
                };
                ops::rope_forward(gpu, q, positions, &self.rope, n, heads.q);
                ops::rope_forward(gpu, k, positions, &self.rope, n, heads.kv);
                ops::kv_write(gpu, &cache.k[l], &cache.v[l], k, &vv, slots, n, kd);
                ops::attention_decode(gpu, &att, q, &cache.k[l], &cache.v[l], table, table_off, lens_t, n, *max_len, heads);
                ops::linear_forward(gpu, &o, &att, lw(li.o), wo(li.ob), n, qd, d);
                ops::residual_forward(gpu, &x2, &x, &o, n * d);
                ops::rmsnorm_forward(gpu, &h, &rstd, &x2, w(li.ln2), n, d, eps);
                ops::linear_forward(gpu, &gate, &h, lw(li.gate), None, n, d, f);
                ops::linear_forward(gpu, &up, &h, lw(li.up), None, n, d, f);
                ops::swiglu_forward(gpu, &act, &gate, &up, n * f);
                ops::linear_forward(gpu, &o, &act, lw(li.down), None, n, f, d);
                ops::residual_forward(gpu, &x, &x2, &o, n * d);
            }
        }
        // Final norm and logits only for each chunk's last row.
        let b = lens.len();
        let last = gpu.alloc(b * d);
        let mut end = 0;
        for (i, len) in lens.iter().enumerate() {
            end += len;
            gpu.copy_range(&x, (end - 1) * d, &last, i * d, d);
        }
        let (hf, rf) = (gpu.alloc(b * d), gpu.alloc(b));
        ops::rmsnorm_forward(gpu, &hf, &rf, &last, w(self.norm), b, d, eps);
        let logits = gpu.alloc(b * v);
        if self.fused_decode(b) {
            ops::decode_linear(gpu, &logits, &hf, self.linear_weight(self.lm_head), None, b, v, d, false);
        } else {
            ops::linear_forward(gpu, &logits, &hf, self.linear_weight(self.lm_head), None, b, d, v);
        }
        logits
    }
}

impl GpuModel {
    /// Whether `rows` new tokens take the fused decode kernels: few enough rows, widths that are
    /// multiples of 4 (vec4 loads), and layer weights that each fit one storage binding (the
    /// output layer may be bound in windows). Otherwise the unfused path (tiled matmul).
    fn fused_decode(&self, rows: usize) -> bool {
        let c = &self.config;
        let (d, f, qd) = (c.hidden_size, c.intermediate_size, self.heads.q * self.heads.dim);
        let fits = self.layers.iter().all(|l| l.projections().iter().all(|&i| self.linear_weight(i).bytes() <= self.gpu.binding_limit()));
        rows <= ops::DECODE_ROWS && d.is_multiple_of(4) && f.is_multiple_of(4) && qd.is_multiple_of(4) && self.heads.dim <= 256 && fits
    }
}
