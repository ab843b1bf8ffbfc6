//! The transformer on the device: the same layer walk as `rstar2_model::Model` (forward over
//! packed sequences, backward to every parameter, AdamW, global-norm clipping), every op a WGSL
//! kernel. Within a step nothing comes back to the host until the log-probs (forward), the loss
//! or the gradient norm are asked for.

use std::sync::Arc;

use rstar2_model::ops::attention::Heads;
use rstar2_model::{AdamWConfig, Batch, Config, LayerIdx, Model, Params};

use crate::context::Gpu;
use crate::ops::{self, Rope};
use crate::tensor::Tensor;

/// A model whose parameters live on one device.
pub struct GpuModel {
    /// The device.
    pub gpu: Arc<Gpu>,
    /// Its config.
    pub config: Config,
    /// Parameters in the order of [`Params`], laid out in a few flat buffers.
    pub params: Flat,
    pub(crate) names: Vec<String>,
    pub(crate) heads: Heads,
    pub(crate) rope: Rope,
    pub(crate) max_pos: usize,
    pub(crate) layers: Vec<LayerIdx>,
    pub(crate) wte: usize,
    pub(crate) norm: usize,
    pub(crate) lm_head: usize,
    /// f16 copies of the projection weights for decoding, when enabled.
    half: Option<HalfWeights>,
    /// The f16 copies were dropped when the parameters changed and are to be made again.
    f16_decode_stale: bool,
}

/// f16 copies of the linear weights in flat buffers, and which copy serves each parameter.
struct HalfWeights {
    copies: Flat,
    /// By parameter index: its position in `copies`.
    slot: Vec<Option<usize>>,
}

/// What one layer's forward saves for backward.
struct LayerActs {
    x_in: Tensor,
    h1: Tensor,
    rstd1: Tensor,
    qk_raw: Option<(Tensor, Tensor, Tensor, Tensor)>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    att: Tensor,
    lse: Tensor,
    x_mid: Tensor,
    h2: Tensor,
    rstd2: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
}

/// Activations of a training forward on the device.
pub struct GpuForward {
    n: usize,
    tokens: Vec<u32>,
    positions: Tensor,
    starts: Tensor,
    ends: Tensor,
    layers: Vec<LayerActs>,
    x_final: Tensor,
    hf: Tensor,
    rstdf: Tensor,
    /// Logits [N, V] on the device.
    pub logits: Tensor,
    lse: Option<Tensor>,
    targets: Option<Tensor>,
}

/// Tensors laid out like a model's parameters (the parameters, their gradients, optimizer
/// moments) in a few flat buffers, each tensor at an aligned offset, so whole-model work (the
/// gradient norm, clipping, AdamW) is a handful of dispatches over the flat buffers rather than
/// a few per tensor. Indexing gives the tensor of a parameter (a view).
pub struct Flat {
    /// The flat buffers.
    pub chunks: Vec<Tensor>,
    parts: Vec<Tensor>,
}

impl std::ops::Deref for Flat {
    type Target = [Tensor];
    fn deref(&self) -> &[Tensor] {
        &self.parts
    }
}

/// Largest flat buffer (below the adapter's buffer limit): 1 GiB.
const FLAT_CHUNK: u64 = 1 << 30;

impl Flat {
    /// Where each of tensors of these lengths goes: (chunk, element offset), and each chunk's
    /// length. Offsets sit on the storage-binding alignment.
    fn layout(gpu: &Gpu, lens: &[usize], elem_bytes: usize) -> (Vec<(usize, usize)>, Vec<usize>) {
        let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / elem_bytes).max(1);
        let cap = FLAT_CHUNK.min(gpu.limits.max_buffer_size) as usize / elem_bytes;
        let (mut at, mut chunks) = (Vec::with_capacity(lens.len()), vec![0usize]);
        for &len in lens {
            let mut end = chunks.last().copied().unwrap_or(0).next_multiple_of(align);
            if end > 0 && end + len > cap {
                chunks.push(0);
                end = 0;
            }
            at.push((chunks.len() - 1, end));
            *chunks.last_mut().expect("a chunk") = end + len;
        }
        (at, chunks)
    }

    fn build(lens: &[usize], chunks: Vec<Tensor>, at: &[(usize, usize)]) -> Flat {
        let parts = lens.iter().zip(at).map(|(&len, &(c, off))| chunks[c].view(off, len)).collect();
        Flat { chunks, parts }
    }

    /// Zeros shaped like `lens`.
    pub fn zeros(gpu: &Gpu, lens: &[usize]) -> Flat {
        let (at, sizes) = Self::layout(gpu, lens, 4);
        let chunks = sizes.iter().map(|&n| gpu.zeros(n)).collect();
        Self::build(lens, chunks, &at)
    }

    /// `data`'s tensors uploaded.
    pub fn upload(gpu: &Gpu, data: &[Vec<f32>]) -> Flat {
        Self::upload_as(gpu, data, false)
    }

    /// `data`'s tensors uploaded in f32, or rounded to f16 (SHADER_F16 needed).
    fn upload_as(gpu: &Gpu, data: &[Vec<f32>], f16: bool) -> Flat {
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let (at, sizes) = Self::layout(gpu, &lens, if f16 { 2 } else { 4 });
        let mut host: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        for (t, &(c, off)) in data.iter().zip(&at) {
            host[c][off..off + t.len()].copy_from_slice(t);
        }
        let chunks = host.iter().map(|h| if f16 { gpu.upload_f16(h) } else { gpu.upload(h) }).collect();
        Self::build(&lens, chunks, &at)
    }

    /// Zeros laid out like `self`.
    pub fn zeros_like(&self, gpu: &Gpu) -> Flat {
        let lens: Vec<usize> = self.parts.iter().map(Tensor::len).collect();
        Self::zeros(gpu, &lens)
    }
}

/// Gradients on the device, in the order of [`Params`].
pub type GpuGrads = Flat;

impl GpuModel {
    /// Uploads a CPU model.
    pub fn new(gpu: Arc<Gpu>, model: &Model) -> Self {
        let params = Flat::upload(&gpu, &model.params.data);
        let rope = Rope::new(&gpu, model.rope());
        GpuModel {
            config: model.config.clone(),
            params,
            names: model.params.specs.iter().map(|(n, _)| n.clone()).collect(),
            heads: model.heads(),
            rope,
            max_pos: model.rope().max_pos(),
            layers: model.layers.clone(),
            wte: model.wte,
            norm: model.norm,
            lm_head: model.lm_head,
            half: None,
            f16_decode_stale: false,
            gpu,
        }
    }

    /// Cached inference ([`GpuModel::extend`]: prefill and decoding) reads f16 copies of the
    /// projection weights: half the bytes per token. Training keeps the f32 weights. Needs
    /// SHADER_F16.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn enable_f16_decode(&mut self) -> Result<(), crate::GpuError> {
        crate::block_on(self.enable_f16_decode_async())
    }

    /// [`Self::enable_f16_decode`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn enable_f16_decode_async(&mut self) -> Result<(), crate::GpuError> {
        if !self.gpu.has_f16() {
            return Err(crate::GpuError::NoF16 { adapter: self.gpu.info.name.clone() });
        }
        let mut linear: Vec<usize> = self.layers.iter().flat_map(LayerIdx::projections).collect();
        linear.push(self.lm_head);
        // In a few flat buffers, like the f32 parameters: fewer buffers for the device to track.
        let mut data: Vec<Vec<f32>> = Vec::with_capacity(linear.len());
        for &i in &linear {
            data.push(self.gpu.read_async(&self.params[i]).await);
        }
        let mut slot = vec![None; self.params.len()];
        for (k, &i) in linear.iter().enumerate() {
            slot[i] = Some(k);
        }
        self.half = Some(HalfWeights { copies: Flat::upload_as(&self.gpu, &data, true), slot });
        Ok(())
    }

    /// The weight cached inference reads for a linear layer: the f16 copy when enabled.
    pub(crate) fn linear_weight(&self, i: usize) -> &Tensor {
        match &self.half {
            Some(h) if let Some(k) = h.slot[i] => &h.copies[k],
            _ => &self.params[i],
        }
    }

    /// Drops the f16 copies (f32 decoding).
    pub fn disable_f16_decode(&mut self) {
        self.half = None;
        self.f16_decode_stale = false;
    }

    /// Whether cached inference reads f16 copies.
    pub fn f16_decode(&self) -> bool {
        self.half.is_some()
    }

    /// The parameters changed (an optimizer step): f16 copies, if any, are dropped, and cached
    /// inference reads the f32 weights until [`GpuModel::refresh_decode_weights`].
    pub fn invalidate_decode_weights(&mut self) {
        if self.half.take().is_some() {
            self.f16_decode_stale = true;
        }
    }

    /// Makes the f16 copies again if [`GpuModel::invalidate_decode_weights`] dropped them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn refresh_decode_weights(&mut self) -> Result<(), crate::GpuError> {
        crate::block_on(self.refresh_decode_weights_async())
    }

    /// [`Self::refresh_decode_weights`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn refresh_decode_weights_async(&mut self) -> Result<(), crate::GpuError> {
        if std::mem::take(&mut self.f16_decode_stale) {
            self.enable_f16_decode_async().await?;
        }
        Ok(())
    }

    /// Replaces the parameters with `params` (same config).
    pub fn upload_params(&mut self, params: &Params) {
        assert!(params.specs.iter().map(|(n, _)| n).eq(self.names.iter()), "upload_params: a different parameter set");
        self.params = Flat::upload(&self.gpu, &params.data);
    }

    /// Reads the parameters back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_params(&self) -> Params {
        crate::block_on(self.download_params_async())
    }

    /// [`Self::download_params`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn download_params_async(&self) -> Params {
        self.download_async(&self.params).await
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> GpuGrads {
        self.params.zeros_like(&self.gpu)
    }

    /// Reads back tensors laid out like the parameters (gradients, optimizer moments).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, tensors: &[Tensor]) -> Params {
        crate::block_on(self.download_async(tensors))
    }

    /// [`Self::download`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn download_async(&self, tensors: &[Tensor]) -> Params {
        let mut p = Params::zeros(&self.config);
        for (dst, src) in p.data.iter_mut().zip(tensors) {
            *dst = self.gpu.read_async(src).await;
        }
        p
    }

    fn w(&self, i: usize) -> &Tensor {
        &self.params[i]
    }

    fn wo(&self, i: Option<usize>) -> Option<&Tensor> {
        i.map(|i| &self.params[i])
    }

    /// Training forward over a packed batch; logits [N, V] stay on the device.
    pub fn forward(&self, batch: &Batch) -> GpuForward {
        let gpu = &*self.gpu;
        let c = &self.config;
        let (n, d, f, v) = (batch.len(), c.hidden_size, c.intermediate_size, c.vocab_size);
        let heads = self.heads;
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let eps = c.rms_norm_eps as f32;
        let (mut starts, mut ends, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for w in batch.offsets.windows(2) {
            for i in w[0]..w[1] {
                starts.push(w[0] as u32);
                ends.push(w[1] as u32);
                positions.push((i - w[0]) as u32);
            }
        }
        assert!(positions.iter().all(|&p| (p as usize) < self.max_pos), "sequence longer than the RoPE table ({})", self.max_pos);
        let ids = gpu.upload_u32(&batch.tokens);
        let (positions, starts, ends) = (gpu.upload_u32(&positions), gpu.upload_u32(&starts), gpu.upload_u32(&ends));
        let mut x = gpu.alloc(n * d);
        ops::embedding_forward(gpu, &x, &ids, self.w(self.wte), n, d);
        let mut layers = Vec::with_capacity(self.layers.len());
        for li in &self.layers {
            let (h1, rstd1) = (gpu.alloc(n * d), gpu.alloc(n));
            ops::rmsnorm_forward(gpu, &h1, &rstd1, &x, self.w(li.ln1), n, d, eps);
            let (q, k, vv) = (gpu.alloc(n * qd), gpu.alloc(n * kd), gpu.alloc(n * kd));
            ops::linear_forward(gpu, &q, &h1, self.w(li.q), self.wo(li.qb), n, d, qd);
            ops::linear_forward(gpu, &k, &h1, self.w(li.k), self.wo(li.kb), n, d, kd);
            ops::linear_forward(gpu, &vv, &h1, self.w(li.v), self.wo(li.vb), n, d, kd);
            let (q, k, qk_raw) = match (li.qn, li.kn) {
                (Some(qn), Some(kn)) => {
                    let (qo, ko, rq, rk) = (gpu.alloc(n * qd), gpu.alloc(n * kd), gpu.alloc(n * heads.q), gpu.alloc(n * heads.kv));
                    ops::rmsnorm_forward(gpu, &qo, &rq, &q, self.w(qn), n * heads.q, heads.dim, eps);
                    ops::rmsnorm_forward(gpu, &ko, &rk, &k, self.w(kn), n * heads.kv, heads.dim, eps);
                    (qo, ko, Some((q, k, rq, rk)))
                }
                _ => (q, k, None),
            };
            ops::rope_forward(gpu, &q, &positions, &self.rope, n, heads.q);
            ops::rope_forward(gpu, &k, &positions, &self.rope, n, heads.kv);
            let (att, lse) = (gpu.alloc(n * qd), gpu.alloc(n * heads.q));
            ops::attention_forward(gpu, &att, &lse, &q, &k, &vv, &starts, n, heads);
            let o = gpu.alloc(n * d);
            ops::linear_forward(gpu, &o, &att, self.w(li.o), self.wo(li.ob), n, qd, d);
            let x_mid = gpu.alloc(n * d);
            ops::residual_forward(gpu, &x_mid, &x, &o, n * d);
            let (h2, rstd2) = (gpu.alloc(n * d), gpu.alloc(n));
            ops::rmsnorm_forward(gpu, &h2, &rstd2, &x_mid, self.w(li.ln2), n, d, eps);
            let (gate, up, act) = (gpu.alloc(n * f), gpu.alloc(n * f), gpu.alloc(n * f));
            ops::linear_forward(gpu, &gate, &h2, self.w(li.gate), None, n, d, f);
            ops::linear_forward(gpu, &up, &h2, self.w(li.up), None, n, d, f);
            ops::swiglu_forward(gpu, &act, &gate, &up, n * f);
            ops::linear_forward(gpu, &o, &act, self.w(li.down), None, n, f, d);
            let x_out = gpu.alloc(n * d);
            ops::residual_forward(gpu, &x_out, &x_mid, &o, n * d);
            let x_in = std::mem::replace(&mut x, x_out);
            layers.push(LayerActs { x_in, h1, rstd1, qk_raw, q, k, v: vv, att, lse, x_mid, h2, rstd2, gate, up, act });
        }
        let (hf, rstdf) = (gpu.alloc(n * d), gpu.alloc(n));
        ops::rmsnorm_forward(gpu, &hf, &rstdf, &x, self.w(self.norm), n, d, eps);
        let logits = gpu.alloc(n * v);
        ops::linear_forward(gpu, &logits, &hf, self.w(self.lm_head), None, n, d, v);
        GpuForward { n, tokens: batch.tokens.clone(), positions, starts, ends, layers, x_final: x, hf, rstdf, logits, lse: None, targets: None }
    }

    /// Logits [N, V] of a batch, read back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logits(&self, batch: &Batch) -> Vec<f32> {
        crate::block_on(self.logits_async(batch))
    }

    /// [`Self::logits`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn logits_async(&self, batch: &Batch) -> Vec<f32> {
        let fwd = self.forward(batch);
        self.gpu.read_async(&fwd.logits).await
    }

    /// Log-prob of `targets[n]` for every row; the one read-back of a training forward.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logprobs(&self, fwd: &mut GpuForward, targets: &[u32]) -> Vec<f32> {
        crate::block_on(self.logprobs_async(fwd, targets))
    }

    /// [`Self::logprobs`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn logprobs_async(&self, fwd: &mut GpuForward, targets: &[u32]) -> Vec<f32> {
        assert_eq!(targets.len(), fwd.n, "logprobs: {} targets for {} rows", targets.len(), fwd.n);
        let gpu = &*self.gpu;
        let (lp, lse, t) = (gpu.alloc(fwd.n), gpu.alloc(fwd.n), gpu.upload_u32(targets));
        ops::logprob_forward(gpu, &lp, &lse, &fwd.logits, &t, fwd.n, self.config.vocab_size);
        fwd.lse = Some(lse);
        fwd.targets = Some(t);
        gpu.read_async(&lp).await
    }

    /// Backward from d(loss)/d(logprob) per row; accumulates into `grads`.
    pub fn backward(&self, fwd: &GpuForward, dlogprob: &[f32], grads: &GpuGrads) {
        let gpu = &*self.gpu;
        let c = &self.config;
        let (n, d, f, v) = (fwd.n, c.hidden_size, c.intermediate_size, c.vocab_size);
        assert_eq!(dlogprob.len(), n, "backward: dlogprob has {} rows, forward had {n}", dlogprob.len());
        let (Some(lse), Some(targets)) = (&fwd.lse, &fwd.targets) else { panic!("backward: call logprobs first") };
        let heads = self.heads;
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let g = |i: usize| &grads[i];
        let go = |i: Option<usize>| i.map(|i| &grads[i]);
        let dlp = gpu.upload(dlogprob);
        let dlogits = gpu.alloc(n * v);
        ops::logprob_backward(gpu, &dlogits, &dlp, &fwd.logits, lse, targets, n, v);
        let dhf = gpu.alloc(n * d);
        ops::linear_backward(gpu, Some(&dhf), g(self.lm_head), None, &dlogits, &fwd.hf, self.w(self.lm_head), n, d, v);
        drop(dlogits);
        let dx = gpu.alloc(n * d);
        ops::rmsnorm_backward(gpu, &dx, g(self.norm), &dhf, &fwd.x_final, self.w(self.norm), &fwd.rstdf, n, d);
        let (tmp_d, dh) = (gpu.alloc(n * d), gpu.alloc(n * d));
        for (li, a) in self.layers.iter().zip(&fwd.layers).rev() {
            // MLP: x_out = x_mid + down(swiglu(gate(h2), up(h2))).
            let dact = gpu.alloc(n * f);
            ops::linear_backward(gpu, Some(&dact), g(li.down), None, &dx, &a.act, self.w(li.down), n, f, d);
            let (dgate, dup) = (gpu.alloc(n * f), gpu.alloc(n * f));
            ops::swiglu_backward(gpu, &dgate, &dup, &dact, &a.gate, &a.up, n * f);
            ops::linear_backward(gpu, Some(&dh), g(li.gate), None, &dgate, &a.h2, self.w(li.gate), n, d, f);
            ops::linear_backward(gpu, Some(&tmp_d), g(li.up), None, &dup, &a.h2, self.w(li.up), n, d, f);
            ops::residual_backward(gpu, &dh, &tmp_d, n * d);
            ops::rmsnorm_backward(gpu, &tmp_d, g(li.ln2), &dh, &a.x_mid, self.w(li.ln2), &a.rstd2, n, d);
            ops::residual_backward(gpu, &dx, &tmp_d, n * d); // dx is now d(x_mid)
            // Attention: x_mid = x_in + o(att).
            let datt = gpu.alloc(n * qd);
            ops::linear_backward(gpu, Some(&datt), g(li.o), go(li.ob), &dx, &a.att, self.w(li.o), n, qd, d);
            let (dq, dk, dv) = (gpu.alloc(n * qd), gpu.alloc(n * kd), gpu.alloc(n * kd));
            ops::attention_backward(gpu, &dq, &dk, &dv, &datt, &a.q, &a.k, &a.v, &a.att, &a.lse, &fwd.starts, &fwd.ends, n, heads);
            ops::rope_backward(gpu, &dq, &fwd.positions, &self.rope, n, heads.q);
            ops::rope_backward(gpu, &dk, &fwd.positions, &self.rope, n, heads.kv);
            let (dq, dk) = match (li.qn, li.kn, &a.qk_raw) {
                (Some(qn), Some(kn), Some((q_raw, k_raw, rq, rk))) => {
                    let (dq_raw, dk_raw) = (gpu.alloc(n * qd), gpu.alloc(n * kd));
                    ops::rmsnorm_backward(gpu, &dq_raw, g(qn), &dq, q_raw, self.w(qn), rq, n * heads.q, heads.dim);
                    ops::rmsnorm_backward(gpu, &dk_raw, g(kn), &dk, k_raw, self.w(kn), rk, n * heads.kv, heads.dim);
                    (dq_raw, dk_raw)
                }
                _ => (dq, dk),
            };
            ops::linear_backward(gpu, Some(&dh), g(li.q), go(li.qb), &dq, &a.h1, self.w(li.q), n, d, qd);
            ops::linear_backward(gpu, Some(&tmp_d), g(li.k), go(li.kb), &dk, &a.h1, self.w(li.k), n, d, kd);
            ops::residual_backward(gpu, &dh, &tmp_d, n * d);
            ops::linear_backward(gpu, Some(&tmp_d), g(li.v), go(li.vb), &dv, &a.h1, self.w(li.v), n, d, kd);
            ops::residual_backward(gpu, &dh, &tmp_d, n * d);
            ops::rmsnorm_backward(gpu, &tmp_d, g(li.ln1), &dh, &a.x_in, self.w(li.ln1), &a.rstd1, n, d);
            ops::residual_backward(gpu, &dx, &tmp_d, n * d); // dx is now d(x_in)
        }
        ops::embedding_backward(gpu, g(self.wte), &dx, &fwd.tokens, d);
    }

    /// Next-token cross-entropy over every sequence (token mean): forward, loss, backward into
    /// `grads`. Returns the loss.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn next_token_loss_backward(&self, batch: &Batch, grads: &GpuGrads) -> f32 {
        crate::block_on(self.next_token_loss_backward_async(batch, grads))
    }

    /// [`Self::next_token_loss_backward`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn next_token_loss_backward_async(&self, batch: &Batch, grads: &GpuGrads) -> f32 {
        let mut fwd = self.forward(batch);
        let (targets, mask) = batch.next_token_targets();
        let lp = self.logprobs_async(&mut fwd, &targets).await;
        let (loss, dlogprob) = rstar2_model::ops::logprob::cross_entropy(&lp, &mask);
        self.backward(&fwd, &dlogprob, grads);
        loss
    }

    /// Global-norm clipping of `grads` on the device; returns the norm before clipping.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn clip_grad_norm(&self, grads: &GpuGrads, max_norm: f32) -> f32 {
        crate::block_on(self.clip_grad_norm_async(grads, max_norm))
    }

    /// [`Self::clip_grad_norm`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn clip_grad_norm_async(&self, grads: &GpuGrads, max_norm: f32) -> f32 {
        // Over the flat buffers: the padding between tensors is zero.
        let refs: Vec<&Tensor> = grads.chunks.iter().collect();
        let result = ops::clip_grad_norm(&self.gpu, &refs, Some(max_norm));
        self.gpu.read_async(&result).await[0]
    }
}

/// AdamW with its moments on the device.
pub struct GpuAdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    m: Flat,
    v: Flat,
    /// Updates taken.
    pub step: u64,
}

impl GpuAdamW {
    /// Zero moments for `model`'s parameters.
    pub fn new(config: AdamWConfig, model: &GpuModel) -> Self {
        GpuAdamW { config, m: model.zero_grads(), v: model.zero_grads(), step: 0 }
    }

    /// Moments and step of a CPU optimizer, uploaded (resuming a checkpoint on the GPU).
    pub fn from_cpu(model: &GpuModel, cpu: &rstar2_model::AdamW) -> Self {
        let up = |p: &Params| Flat::upload(&model.gpu, &p.data);
        GpuAdamW { config: cpu.config, m: up(&cpu.m), v: up(&cpu.v), step: cpu.step }
    }

    /// The optimizer read back as a CPU one (checkpoints).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_cpu(&self, model: &GpuModel) -> rstar2_model::AdamW {
        crate::block_on(self.to_cpu_async(model))
    }

    /// [`Self::to_cpu`], asynchronously (how a page calls it: a browser cannot block).
    pub async fn to_cpu_async(&self, model: &GpuModel) -> rstar2_model::AdamW {
        let m = model.download_async(&self.m).await;
        let v = model.download_async(&self.v).await;
        rstar2_model::AdamW { config: self.config, m, v, step: self.step }
    }

    /// One update of every parameter: one kernel over each flat buffer (in windows), the zero
    /// padding between tensors staying zero.
    pub fn update(&mut self, model: &mut GpuModel, grads: &GpuGrads, lr: f32) {
        self.step += 1;
        let chunks = model.params.chunks.iter().zip(&self.m.chunks).zip(&self.v.chunks).zip(&grads.chunks);
        for (((p, m), v), g) in chunks {
            ops::adamw(&model.gpu, p, m, v, g, &self.config, lr, self.step);
        }
    }
}
