//! AdamW (decoupled weight decay, bias correction, as `torch.optim.AdamW`), global-norm
//! gradient clipping (as `torch.nn.utils.clip_grad_norm_`), and the learning-rate schedule.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::simd::{Kernel, Simd, dispatch};

use crate::weights::Params;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// beta1.
    pub beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW state: moments and step count.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// First moments.
    pub m: Params,
    /// Second moments.
    pub v: Params,
    /// Steps taken.
    pub step: u64,
}

impl AdamW {
    /// Fresh state for parameters shaped like `params`.
    pub fn new(config: AdamWConfig, params: &Params) -> Self {
        AdamW { config, m: params.zeros_like(), v: params.zeros_like(), step: 0 }
    }

    /// One update with learning rate `lr`.
    pub fn update(&mut self, params: &mut Params, grads: &Params, lr: f32) {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let isa = crate::cpu::isa();
        for (((p, g), m), v) in params.data.iter_mut().zip(&grads.data).zip(self.m.data.iter_mut()).zip(self.v.data.iter_mut()) {
            p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).for_each(|(((p, g), m), v)| {
                dispatch(isa, AdamWChunk { p, g, m, v, c, lr, step_size: lr / bc1, bc2_sqrt });
            });
        }
    }
}

/// Elements per parallel task of the element-wise optimizer work.
const CHUNK: usize = 16384;

/// One chunk of an AdamW update, in the order torch's single-tensor AdamW computes it.
struct AdamWChunk<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    c: AdamWConfig,
    lr: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

impl Kernel for AdamWChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let AdamWChunk { p, g, m, v, c, lr, step_size, bc2_sqrt } = self;
        let n = p.len();
        let full = n / S::LANES * S::LANES;
        // SAFETY: i + LANES <= n for all four chunks (zipped chunks of equal length).
        unsafe {
            let (decay, b1, b1c, b2, b2c) = (S::splat(1.0 - lr * c.weight_decay), S::splat(c.beta1), S::splat(1.0 - c.beta1), S::splat(c.beta2), S::splat(1.0 - c.beta2));
            let (eps, bc2, step) = (S::splat(c.eps), S::splat(bc2_sqrt), S::splat(step_size));
            for i in (0..full).step_by(S::LANES) {
                let gi = S::load(g.as_ptr().add(i));
                let mi = S::add(S::mul(b1, S::load(m.as_ptr().add(i))), S::mul(b1c, gi));
                let vi = S::add(S::mul(b2, S::load(v.as_ptr().add(i))), S::mul(S::mul(b2c, gi), gi));
                let denom = S::add(S::div(S::sqrt(vi), bc2), eps);
                let pi = S::mul(S::load(p.as_ptr().add(i)), decay);
                S::store(p.as_mut_ptr().add(i), S::sub(pi, S::div(S::mul(step, mi), denom)));
                S::store(m.as_mut_ptr().add(i), mi);
                S::store(v.as_mut_ptr().add(i), vi);
            }
        }
        for i in full..n {
            p[i] *= 1.0 - lr * c.weight_decay;
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / bc2_sqrt + c.eps;
            p[i] -= step_size * m[i] / denom;
        }
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut Params, max_norm: f32) -> f32 {
    // Squares summed in f64 per chunk, in parallel.
    let sum: f64 = grads.data.iter().map(|g| g.par_chunks(CHUNK).map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()).sum::<f64>()).sum();
    let norm = sum.sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in &mut grads.data {
            g.par_iter_mut().for_each(|x| *x *= coef);
        }
    }
    norm
}

/// Learning rate over steps: linear warm-up, then constant or cosine decay to `min_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub lr: f32,
    /// Warm-up steps (linear from lr / warmup to lr).
    pub warmup_steps: u64,
    /// `Some(total)`: cosine decay from the end of warm-up to step `total`.
    pub cosine_total_steps: Option<u64>,
    /// Floor of the cosine as a fraction of `lr`.
    pub min_ratio: f32,
}

impl LrSchedule {
    /// Constant `lr` after `warmup_steps`.
    pub fn constant(lr: f32, warmup_steps: u64) -> Self {
        LrSchedule { lr, warmup_steps, cosine_total_steps: None, min_ratio: 0.0 }
    }

    /// The rate at step `step` (0-based).
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        match self.cosine_total_steps {
            None => self.lr,
            Some(total) => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f32;
                let t = ((step - self.warmup_steps) as f32 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f32::consts::PI * t).cos());
                self.lr * (self.min_ratio + (1.0 - self.min_ratio) * cos)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_by_hand() {
        let s = LrSchedule::constant(1.0, 4);
        assert_eq!([s.at(0), s.at(1), s.at(3), s.at(100)], [0.25, 0.5, 1.0, 1.0]);
        let c = LrSchedule { lr: 2.0, warmup_steps: 0, cosine_total_steps: Some(10), min_ratio: 0.0 };
        assert!((c.at(0) - 2.0).abs() < 1e-6 && (c.at(5) - 1.0).abs() < 1e-6 && c.at(10).abs() < 1e-6);
    }
}
