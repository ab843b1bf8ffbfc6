//! The model's operations on the CPU, each forward beside its backward (llm.c order: outputs
//! first, then saved activations, inputs, dims). Parameter gradients accumulate; activation
//! gradients overwrite. These are the CPU backend and the reference the WGSL kernels are checked
//! against.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod bf16;
pub mod embedding;
pub mod gemv;
pub mod logprob;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
#[cfg(target_arch = "x86_64")]
pub(crate) mod sgemm;
pub mod swiglu;

/// out = a + b
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// da += dout, db += dout
pub fn residual_backward(da: &mut [f32], db: &mut [f32], dout: &[f32]) {
    for ((a, b), d) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *a += d;
        *b += d;
    }
}

#[cfg(test)]
mod gradcheck;
