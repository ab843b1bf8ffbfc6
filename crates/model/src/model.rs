//! The decoder-only transformer (Llama / Qwen2 / Qwen3) on the CPU: training forward over packed
//! sequences, backward to every parameter, and cached inference.

use half::f16;

use crate::config::Config;
use crate::ops::attention::{Heads, attention_backward, attention_forward};
use crate::ops::embedding::{embedding_backward, embedding_forward};
use crate::ops::gemv::{DecodeWeights, PackedWeight};
use crate::ops::logprob::{logprob_backward, logprob_forward};
use crate::ops::matmul::{linear_backward, linear_forward};
use crate::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::ops::rope::{RopeTable, rope_backward, rope_forward};
use crate::ops::swiglu::{swiglu_backward, swiglu_forward};
use crate::weights::Params;

/// Indices of one layer's tensors in [`Params`].
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct LayerIdx {
    pub ln1: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub qb: Option<usize>,
    pub kb: Option<usize>,
    pub vb: Option<usize>,
    pub qn: Option<usize>,
    pub kn: Option<usize>,
    pub o: usize,
    pub ob: Option<usize>,
    pub ln2: usize,
    pub gate: usize,
    pub up: usize,
    pub down: usize,
}

impl LayerIdx {
    /// The layer's projection weights: q, k, v, o, gate, up, down.
    pub fn projections(&self) -> [usize; 7] {
        [self.q, self.k, self.v, self.o, self.gate, self.up, self.down]
    }
}

/// A model: config, parameters, RoPE tables.
pub struct Model {
    /// Its config.
    pub config: Config,
    /// Its parameters (f32 master weights).
    pub params: Params,
    pub(crate) rope: RopeTable,
    /// Each layer's tensor indices in `params` (shared with the GPU backend).
    pub layers: Vec<LayerIdx>,
    /// Index of the token embedding.
    pub wte: usize,
    /// Index of the final norm.
    pub norm: usize,
    /// Index of the output projection (the embedding when tied).
    pub lm_head: usize,
    /// Packed copies of the projection and output weights that cached inference reads, by
    /// parameter index (see [`Model::set_decode_weights`]).
    pub(crate) packed: Vec<Option<PackedWeight>>,
    decode: Option<DecodeWeights>,
}

/// Packed sequences: `tokens` of all sequences back to back, `offsets` their boundaries
/// (`offsets[s]..offsets[s+1]` is sequence s; `offsets[0] == 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Sequence boundaries, length sequences + 1.
    pub offsets: Vec<usize>,
}

impl Batch {
    /// Packs sequences.
    pub fn new(sequences: &[Vec<u32>]) -> Self {
        let mut tokens = Vec::new();
        let mut offsets = vec![0];
        for s in sequences {
            tokens.extend_from_slice(s);
            offsets.push(tokens.len());
        }
        Batch { tokens, offsets }
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// For every row: the first row of its sequence, and its position in that sequence.
    fn starts_and_positions(&self) -> (Vec<usize>, Vec<usize>) {
        let mut starts = Vec::with_capacity(self.len());
        let mut positions = Vec::with_capacity(self.len());
        for w in self.offsets.windows(2) {
            for i in w[0]..w[1] {
                starts.push(w[0]);
                positions.push(i - w[0]);
            }
        }
        (starts, positions)
    }

    /// Next-token targets per row, and a mask that is 0 on each sequence's last row.
    pub fn next_token_targets(&self) -> (Vec<u32>, Vec<f32>) {
        let mut targets = vec![0u32; self.len()];
        let mut mask = vec![0.0f32; self.len()];
        for w in self.offsets.windows(2) {
            for i in w[0]..w[1].saturating_sub(1) {
                targets[i] = self.tokens[i + 1];
                mask[i] = 1.0;
            }
        }
        (targets, mask)
    }
}

/// What one layer's forward saves for backward.
struct LayerActs {
    x_in: Vec<f32>,
    h1: Vec<f32>,
    rstd1: Vec<f32>,
    /// q, k before the per-head norm, with its rstd (Qwen3 only).
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
    /// q, k after norm and RoPE; v.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// Activations of a training forward pass, needed for backward.
pub struct Forward {
    n: usize,
    tokens: Vec<u32>,
    starts: Vec<usize>,
    positions: Vec<usize>,
    layers: Vec<LayerActs>,
    x_final: Vec<f32>,
    hf: Vec<f32>,
    rstdf: Vec<f32>,
    /// Logits [N, V].
    pub logits: Vec<f32>,
    lse: Vec<f32>,
    targets: Vec<u32>,
}

impl Forward {
    /// Log-prob of `targets[n]` under row n's distribution, for every row.
    pub fn logprobs(&mut self, targets: &[u32], vocab: usize) -> Vec<f32> {
        assert_eq!(targets.len(), self.n, "logprobs: {} targets for {} rows", targets.len(), self.n);
        let mut lp = vec![0.0; self.n];
        self.lse = vec![0.0; self.n];
        logprob_forward(&mut lp, &mut self.lse, &self.logits, targets, vocab);
        self.targets = targets.to_vec();
        lp
    }
}

impl Model {
    /// A model from a config and parameters (shapes already checked).
    pub fn new(config: Config, params: Params) -> Self {
        let idx = |name: &str| params.index_of(name).unwrap_or_else(|| panic!("parameter {name} missing"));
        let opt = |name: String| params.index_of(&name);
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = |s: &str| format!("model.layers.{l}.{s}");
                LayerIdx {
                    ln1: idx(&p("input_layernorm.weight")),
                    q: idx(&p("self_attn.q_proj.weight")),
                    k: idx(&p("self_attn.k_proj.weight")),
                    v: idx(&p("self_attn.v_proj.weight")),
                    qb: opt(p("self_attn.q_proj.bias")),
                    kb: opt(p("self_attn.k_proj.bias")),
                    vb: opt(p("self_attn.v_proj.bias")),
                    qn: opt(p("self_attn.q_norm.weight")),
                    kn: opt(p("self_attn.k_norm.weight")),
                    o: idx(&p("self_attn.o_proj.weight")),
                    ob: opt(p("self_attn.o_proj.bias")),
                    ln2: idx(&p("post_attention_layernorm.weight")),
                    gate: idx(&p("mlp.gate_proj.weight")),
                    up: idx(&p("mlp.up_proj.weight")),
                    down: idx(&p("mlp.down_proj.weight")),
                }
            })
            .collect();
        let wte = idx("model.embed_tokens.weight");
        let norm = idx("model.norm.weight");
        let lm_head = if config.tie_word_embeddings { wte } else { idx("lm_head.weight") };
        let rope = RopeTable::new(config.head_dim(), config.rope_theta(), config.max_position_embeddings.min(1 << 16));
        Model { config, params, rope, layers, wte, norm, lm_head, packed: Vec::new(), decode: None }
    }

    /// The projection weights (q, k, v, o, gate, up, down of every layer) and the output layer:
    /// what cached inference may read in f16.
    pub fn linear_weights(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self.layers.iter().flat_map(LayerIdx::projections).collect();
        out.push(self.lm_head);
        out
    }

    /// Repacks the linear weights for decoding ([`crate::ops::gemv::PackedWeight`]) in the
    /// given type; until then cached inference runs every product through gemm on the f32
    /// weights. f16 and bf16 round to nearest even; a tensor with a value beyond f16's range
    /// (65504) is packed in f32 when f16 was asked for. After the parameters change, call [`Model::invalidate_decode_weights`].
    pub fn set_decode_weights(&mut self, weights: DecodeWeights) {
        self.decode = Some(weights);
        self.packed.clear();
        self.refresh_decode_weights();
    }

    /// The type set by [`Model::set_decode_weights`], if any.
    pub fn decode_weights(&self) -> Option<DecodeWeights> {
        self.decode
    }

    /// Drops the packed copies (the parameters changed: an optimizer step); cached inference
    /// uses the f32 weights until [`Model::refresh_decode_weights`] packs them again.
    pub fn invalidate_decode_weights(&mut self) {
        self.packed.clear();
    }

    /// Packs the linear weights in the type set by [`Model::set_decode_weights`] unless they
    /// are packed already. Projections that read the same input are packed as one weight (a
    /// layer's q, k and v; its gate and up), filed under the first of them, so decoding makes
    /// one pass over them: one parallel region, one conversion of the activations.
    pub fn refresh_decode_weights(&mut self) {
        let Some(dtype) = self.decode.map(DecodeWeights::on_this_cpu) else { return };
        if !self.packed.is_empty() {
            return;
        }
        let mut packed: Vec<Option<PackedWeight>> = (0..self.params.data.len()).map(|_| None).collect();
        for group in self.decode_groups() {
            let k = self.params.specs[group[0]].1[1];
            let rows: usize = group.iter().map(|&i| self.params.specs[i].1[0]).sum();
            let joined: Vec<f32>;
            let w = if group.len() == 1 {
                &self.params.data[group[0]]
            } else {
                joined = group.iter().flat_map(|&i| self.params.data[i].iter().copied()).collect();
                &joined
            };
            let fits = dtype != DecodeWeights::F16 || w.iter().all(|x| x.abs() <= f32::from(f16::MAX));
            packed[group[0]] = Some(PackedWeight::pack(w, rows, k, if fits { dtype } else { DecodeWeights::F32 }));
        }
        self.packed = packed;
    }

    /// The linear weights as decoding reads them: per layer [q, k, v], [o], [gate, up], [down];
    /// then the output layer.
    fn decode_groups(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = self.layers.iter().flat_map(|l| [vec![l.q, l.k, l.v], vec![l.o], vec![l.gate, l.up], vec![l.down]]).collect();
        groups.push(vec![self.lm_head]);
        groups
    }

    /// Bytes of weights one decoding step reads (the packed linear weights, or the f32 ones).
    pub fn decode_bytes(&self) -> usize {
        if self.packed.is_empty() {
            return self.linear_weights().iter().map(|&i| self.params.data[i].len() * 4).sum();
        }
        self.packed.iter().flatten().map(PackedWeight::bytes).sum()
    }

    /// The packed copy that cached inference reads for the group of weights starting at
    /// parameter `i` (see [`Model::refresh_decode_weights`]), if any.
    pub(crate) fn packed_weight(&self, i: usize) -> Option<&PackedWeight> {
        self.packed.get(i).and_then(Option::as_ref)
    }

    /// Its attention heads.
    pub fn heads(&self) -> Heads {
        Heads { q: self.config.num_attention_heads, kv: self.config.kv_heads(), dim: self.config.head_dim() }
    }

    /// Its RoPE tables.
    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }

    fn w(&self, i: usize) -> &[f32] {
        &self.params.data[i]
    }

    fn wo(&self, i: Option<usize>) -> Option<&[f32]> {
        i.map(|i| self.params.data[i].as_slice())
    }

    /// Training forward over a packed batch; returns the activations with logits [N, V].
    pub fn forward(&self, batch: &Batch) -> Forward {
        crate::cpu::on_pool(|| self.forward_here(batch))
    }

    fn forward_here(&self, batch: &Batch) -> Forward {
        let c = &self.config;
        let (n, d, f, v) = (batch.len(), c.hidden_size, c.intermediate_size, c.vocab_size);
        let heads = self.heads();
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let eps = c.rms_norm_eps as f32;
        let (starts, positions) = batch.starts_and_positions();
        assert!(positions.iter().all(|&p| p < self.rope.max_pos()), "sequence longer than the RoPE table ({})", self.rope.max_pos());
        let mut x = vec![0.0; n * d];
        embedding_forward(&mut x, &batch.tokens, self.w(self.wte), d);
        let mut layers = Vec::with_capacity(self.layers.len());
        for li in &self.layers {
            let mut a = LayerActs {
                x_in: x.clone(),
                h1: vec![0.0; n * d],
                rstd1: vec![0.0; n],
                q_raw: Vec::new(),
                k_raw: Vec::new(),
                rstd_q: Vec::new(),
                rstd_k: Vec::new(),
                q: vec![0.0; n * qd],
                k: vec![0.0; n * kd],
                v: vec![0.0; n * kd],
                att: vec![0.0; n * qd],
                lse: vec![0.0; n * heads.q],
                x_mid: vec![0.0; n * d],
                h2: vec![0.0; n * d],
                rstd2: vec![0.0; n],
                gate: vec![0.0; n * f],
                up: vec![0.0; n * f],
                act: vec![0.0; n * f],
            };
            rmsnorm_forward(&mut a.h1, &mut a.rstd1, &x, self.w(li.ln1), d, eps);
            linear_forward(&mut a.q, &a.h1, self.w(li.q), self.wo(li.qb), n, d, qd);
            linear_forward(&mut a.k, &a.h1, self.w(li.k), self.wo(li.kb), n, d, kd);
            linear_forward(&mut a.v, &a.h1, self.w(li.v), self.wo(li.vb), n, d, kd);
            if let (Some(qn), Some(kn)) = (li.qn, li.kn) {
                a.q_raw = a.q.clone();
                a.k_raw = a.k.clone();
                a.rstd_q = vec![0.0; n * heads.q];
                a.rstd_k = vec![0.0; n * heads.kv];
                rmsnorm_forward(&mut a.q, &mut a.rstd_q, &a.q_raw, self.w(qn), heads.dim, eps);
                rmsnorm_forward(&mut a.k, &mut a.rstd_k, &a.k_raw, self.w(kn), heads.dim, eps);
            }
            rope_forward(&mut a.q, &positions, &self.rope, heads.q);
            rope_forward(&mut a.k, &positions, &self.rope, heads.kv);
            attention_forward(&mut a.att, &mut a.lse, &a.q, &a.k, &a.v, &starts, heads);
            let mut o = vec![0.0; n * d];
            linear_forward(&mut o, &a.att, self.w(li.o), self.wo(li.ob), n, qd, d);
            for ((m, xi), oi) in a.x_mid.iter_mut().zip(&x).zip(&o) {
                *m = xi + oi;
            }
            rmsnorm_forward(&mut a.h2, &mut a.rstd2, &a.x_mid, self.w(li.ln2), d, eps);
            linear_forward(&mut a.gate, &a.h2, self.w(li.gate), None, n, d, f);
            linear_forward(&mut a.up, &a.h2, self.w(li.up), None, n, d, f);
            swiglu_forward(&mut a.act, &a.gate, &a.up);
            linear_forward(&mut o, &a.act, self.w(li.down), None, n, f, d);
            for ((xo, m), oi) in x.iter_mut().zip(&a.x_mid).zip(&o) {
                *xo = m + oi;
            }
            layers.push(a);
        }
        let mut hf = vec![0.0; n * d];
        let mut rstdf = vec![0.0; n];
        rmsnorm_forward(&mut hf, &mut rstdf, &x, self.w(self.norm), d, eps);
        let mut logits = vec![0.0; n * v];
        linear_forward(&mut logits, &hf, self.w(self.lm_head), None, n, d, v);
        Forward { n, tokens: batch.tokens.clone(), starts, positions, layers, x_final: x, hf, rstdf, logits, lse: Vec::new(), targets: Vec::new() }
    }

    /// Backward from d(loss)/d(logprob) per row (of the targets given to
    /// [`Forward::logprobs`]); accumulates into `grads`.
    pub fn backward(&self, fwd: &Forward, dlogprob: &[f32], grads: &mut Params) {
        crate::cpu::on_pool(|| self.backward_here(fwd, dlogprob, grads));
    }

    fn backward_here(&self, fwd: &Forward, dlogprob: &[f32], grads: &mut Params) {
        let c = &self.config;
        let (n, d, f, v) = (fwd.n, c.hidden_size, c.intermediate_size, c.vocab_size);
        assert_eq!(dlogprob.len(), n, "backward: dlogprob has {} rows, forward had {n}", dlogprob.len());
        assert_eq!(fwd.targets.len(), n, "backward: call Forward::logprobs first");
        let heads = self.heads();
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let mut dlogits = vec![0.0; n * v];
        logprob_backward(&mut dlogits, dlogprob, &fwd.logits, &fwd.lse, &fwd.targets, v);
        let mut dhf = vec![0.0; n * d];
        linear_backward(Some(&mut dhf), &mut grads.data[self.lm_head], None, &dlogits, &fwd.hf, self.w(self.lm_head), n, d, v);
        drop(dlogits);
        let mut dx = vec![0.0; n * d];
        rmsnorm_backward(&mut dx, &mut grads.data[self.norm], &dhf, &fwd.x_final, self.w(self.norm), &fwd.rstdf, d);
        let mut tmp_d = vec![0.0; n * d];
        let mut dh = vec![0.0; n * d];
        for (li, a) in self.layers.iter().zip(&fwd.layers).rev() {
            // MLP: x_out = x_mid + down(swiglu(gate(h2), up(h2))).
            let mut dact = vec![0.0; n * f];
            linear_backward(Some(&mut dact), &mut grads.data[li.down], None, &dx, &a.act, self.w(li.down), n, f, d);
            let (mut dgate, mut dup) = (vec![0.0; n * f], vec![0.0; n * f]);
            swiglu_backward(&mut dgate, &mut dup, &dact, &a.gate, &a.up);
            linear_backward(Some(&mut dh), &mut grads.data[li.gate], None, &dgate, &a.h2, self.w(li.gate), n, d, f);
            linear_backward(Some(&mut tmp_d), &mut grads.data[li.up], None, &dup, &a.h2, self.w(li.up), n, d, f);
            add_into(&mut dh, &tmp_d);
            rmsnorm_backward(&mut tmp_d, &mut grads.data[li.ln2], &dh, &a.x_mid, self.w(li.ln2), &a.rstd2, d);
            add_into(&mut dx, &tmp_d); // dx is now d(x_mid)
            // Attention: x_mid = x_in + o(att).
            let mut datt = vec![0.0; n * qd];
            let (wo, gob) = (self.w(li.o), li.ob);
            {
                let (dwo, dbo) = split_two(&mut grads.data, li.o, gob);
                linear_backward(Some(&mut datt), dwo, dbo, &dx, &a.att, wo, n, qd, d);
            }
            let (mut dq, mut dk, mut dv) = (vec![0.0; n * qd], vec![0.0; n * kd], vec![0.0; n * kd]);
            attention_backward(&mut dq, &mut dk, &mut dv, &datt, &a.q, &a.k, &a.v, &a.att, &a.lse, &fwd.starts, heads);
            rope_backward(&mut dq, &fwd.positions, &self.rope, heads.q);
            rope_backward(&mut dk, &fwd.positions, &self.rope, heads.kv);
            if let (Some(qn), Some(kn)) = (li.qn, li.kn) {
                let mut dq_raw = vec![0.0; n * qd];
                rmsnorm_backward(&mut dq_raw, &mut grads.data[qn], &dq, &a.q_raw, self.w(qn), &a.rstd_q, heads.dim);
                dq = dq_raw;
                let mut dk_raw = vec![0.0; n * kd];
                rmsnorm_backward(&mut dk_raw, &mut grads.data[kn], &dk, &a.k_raw, self.w(kn), &a.rstd_k, heads.dim);
                dk = dk_raw;
            }
            {
                let (dwq, dbq) = split_two(&mut grads.data, li.q, li.qb);
                linear_backward(Some(&mut dh), dwq, dbq, &dq, &a.h1, self.w(li.q), n, d, qd);
            }
            {
                let (dwk, dbk) = split_two(&mut grads.data, li.k, li.kb);
                linear_backward(Some(&mut tmp_d), dwk, dbk, &dk, &a.h1, self.w(li.k), n, d, kd);
            }
            add_into(&mut dh, &tmp_d);
            {
                let (dwv, dbv) = split_two(&mut grads.data, li.v, li.vb);
                linear_backward(Some(&mut tmp_d), dwv, dbv, &dv, &a.h1, self.w(li.v), n, d, kd);
            }
            add_into(&mut dh, &tmp_d);
            rmsnorm_backward(&mut tmp_d, &mut grads.data[li.ln1], &dh, &a.x_in, self.w(li.ln1), &a.rstd1, d);
            add_into(&mut dx, &tmp_d); // dx is now d(x_in)
        }
        embedding_backward(&mut grads.data[self.wte], &dx, &fwd.tokens, d);
    }
}

impl Model {
    /// Next-token cross-entropy over every sequence of `batch` (token mean over the batch):
    /// forward, loss, and backward accumulated into `grads`. Returns the loss.
    pub fn next_token_loss_backward(&self, batch: &Batch, grads: &mut Params) -> f32 {
        let mut fwd = self.forward(batch);
        let (targets, mask) = batch.next_token_targets();
        let lp = fwd.logprobs(&targets, self.config.vocab_size);
        let (loss, dlogprob) = crate::ops::logprob::cross_entropy(&lp, &mask);
        self.backward(&fwd, &dlogprob, grads);
        loss
    }
}

fn add_into(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Mutable borrows of a weight gradient and its optional bias gradient.
fn split_two(data: &mut [Vec<f32>], w: usize, b: Option<usize>) -> (&mut [f32], Option<&mut [f32]>) {
    match b {
        None => (&mut data[w], None),
        Some(b) => {
            assert_ne!(w, b);
            if w < b {
                let (lo, hi) = data.split_at_mut(b);
                (&mut lo[w], Some(&mut hi[0]))
            } else {
                let (lo, hi) = data.split_at_mut(w);
                (&mut hi[0], Some(&mut lo[b]))
            }
        }
    }
}
