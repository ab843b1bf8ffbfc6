//! SwiGLU: `out = silu(gate) * up`, with `silu(g) = g * sigmoid(g)`.

use rayon::prelude::*;

use crate::simd::{Kernel, Simd, dispatch};

/// Elements per parallel task.
const CHUNK: usize = 4096;

/// out[N,F] from gate[N,F], up[N,F].
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    let isa = crate::cpu::isa();
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(|((out, gate), up)| dispatch(isa, Forward { out, gate, up }));
}

/// dgate, dup (overwrite) from dout, gate, up.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let isa = crate::cpu::isa();
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)))
        .for_each(|((dgate, dup), ((dout, gate), up))| dispatch(isa, Backward { dgate, dup, dout, gate, up }));
}

/// sigmoid(g) = 1 / (1 + e^-g), a vector of it.
#[inline(always)]
unsafe fn sigmoid<S: Simd>(g: S::V) -> S::V {
    // SAFETY: the caller's (the set is present).
    unsafe {
        let one = S::splat(1.0);
        S::div(one, S::add(one, S::exp(S::sub(S::zero(), g))))
    }
}

struct Forward<'a> {
    out: &'a mut [f32],
    gate: &'a [f32],
    up: &'a [f32],
}

impl Kernel for Forward<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let n = self.out.len().min(self.gate.len()).min(self.up.len());
        let full = n / S::LANES * S::LANES;
        for i in (0..full).step_by(S::LANES) {
            // SAFETY: i + LANES <= n for all three slices.
            unsafe {
                let g = S::load(self.gate.as_ptr().add(i));
                let silu = S::mul(g, sigmoid::<S>(g));
                S::store(self.out.as_mut_ptr().add(i), S::mul(silu, S::load(self.up.as_ptr().add(i))));
            }
        }
        for i in full..n {
            let g = self.gate[i];
            self.out[i] = g / (1.0 + (-g).exp()) * self.up[i];
        }
    }
}

struct Backward<'a> {
    dgate: &'a mut [f32],
    dup: &'a mut [f32],
    dout: &'a [f32],
    gate: &'a [f32],
    up: &'a [f32],
}

impl Kernel for Backward<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let n = self.dgate.len();
        let full = n / S::LANES * S::LANES;
        // d silu / dg = s (1 + g (1 - s)) with s = sigmoid(g).
        for i in (0..full).step_by(S::LANES) {
            // SAFETY: i + LANES <= n for all five slices (zipped chunks of equal length).
            unsafe {
                let (g, u, d) = (S::load(self.gate.as_ptr().add(i)), S::load(self.up.as_ptr().add(i)), S::load(self.dout.as_ptr().add(i)));
                let s = sigmoid::<S>(g);
                let one = S::splat(1.0);
                S::store(self.dup.as_mut_ptr().add(i), S::mul(d, S::mul(g, s)));
                let dsilu = S::mul(s, S::fmadd(g, S::sub(one, s), one));
                S::store(self.dgate.as_mut_ptr().add(i), S::mul(S::mul(d, u), dsilu));
            }
        }
        for i in full..n {
            let (g, u, d) = (self.gate[i], self.up[i], self.dout[i]);
            let s = 1.0 / (1.0 + (-g).exp());
            self.dup[i] = d * g * s;
            self.dgate[i] = d * u * (s * (1.0 + g * (1.0 - s)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;

    /// Every instruction set against the formulas in f64, over a range that reaches the
    /// saturated ends of the sigmoid, with a length that leaves a scalar tail.
    #[test]
    fn every_isa_matches_the_formulas() {
        let n = 1003;
        let gate: Vec<f32> = (0..n).map(|i| -30.0 + 60.0 * i as f32 / n as f32).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
        let dout: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
        for isa in Isa::available() {
            let mut out = vec![0.0; n];
            dispatch(isa, Forward { out: &mut out, gate: &gate, up: &up });
            let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
            dispatch(isa, Backward { dgate: &mut dgate, dup: &mut dup, dout: &dout, gate: &gate, up: &up });
            for i in 0..n {
                let (g, u, d) = (f64::from(gate[i]), f64::from(up[i]), f64::from(dout[i]));
                let s = 1.0 / (1.0 + (-g).exp());
                let close = |got: f32, want: f64| (f64::from(got) - want).abs() <= 1e-6 * (1.0 + want.abs());
                assert!(close(out[i], g * s * u), "{isa:?} forward at g={g}: {} vs {}", out[i], g * s * u);
                assert!(close(dup[i], d * g * s), "{isa:?} dup at g={g}");
                assert!(close(dgate[i], d * u * s * (1.0 + g * (1.0 - s))), "{isa:?} dgate at g={g}: {} vs {}", dgate[i], d * u * s * (1.0 + g * (1.0 - s)));
            }
        }
    }
}
