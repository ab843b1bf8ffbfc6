//! Every WGSL kernel of `shaders/`, compiled into the binary with `include_str!`.

/// A kernel: its file stem and WGSL source; entry point `main`.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// File stem in `shaders/`.
    pub name: &'static str,
    /// WGSL source.
    pub source: &'static str,
}

macro_rules! kernels {
    ($($id:ident => $file:literal),* $(,)?) => {
        $(
            #[allow(missing_docs)]
            pub const $id: Kernel = Kernel { name: $file, source: include_str!(concat!("../../../shaders/", $file, ".wgsl")) };
        )*
        /// All kernels, for validation and the benchmark listing.
        pub const ALL: &[Kernel] = &[$($id),*];
    };
}

kernels! {
    MATMUL => "matmul",
    MATVEC => "matvec",
    MATVEC_F16 => "matvec_f16",
    BIAS_FORWARD => "bias_forward",
    BIAS_BACKWARD => "bias_backward",
    EMBEDDING_FORWARD => "embedding_forward",
    EMBEDDING_BACKWARD => "embedding_backward",
    RMSNORM_FORWARD => "rmsnorm_forward",
    RMSNORM_BACKWARD => "rmsnorm_backward",
    RMSNORM_BACKWARD_WEIGHT => "rmsnorm_backward_weight",
    ROPE => "rope",
    SWIGLU_FORWARD => "swiglu_forward",
    SWIGLU_BACKWARD => "swiglu_backward",
    RESIDUAL_FORWARD => "residual_forward",
    RESIDUAL_BACKWARD => "residual_backward",
    ATTENTION_FORWARD => "attention_forward",
    ATTENTION_BACKWARD_DQ => "attention_backward_dq",
    ATTENTION_BACKWARD_DKDV => "attention_backward_dkdv",
    ATTENTION_DECODE => "attention_decode",
    KV_WRITE => "kv_write",
    LOGPROB_FORWARD => "logprob_forward",
    LOGPROB_BACKWARD => "logprob_backward",
    ADAMW => "adamw",
    GRAD_NORM_PARTIAL => "grad_norm_partial",
    GRAD_NORM_FINISH => "grad_norm_finish",
    GRAD_SCALE => "grad_scale",
}
