//! Every WGSL kernel of `shaders/`, compiled into the binary with `include_str!`.

/// A kernel: its file stem and WGSL source; entry point `main`.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// File stem in `shaders/`.
    pub name: &'static str,
    /// WGSL source.
    pub source: &'static str,
}

/// How a kernel declares the type of its weight operand; its f16-weights variant swaps it.
const WEIGHTS_F32: &str = "alias WT = f32;";
/// How a kernel multiplies an activation by a weight; the f16 variant multiplies in f16.
const PRODUCT_F32: &str = "fn product(a: f32, w: WT) -> f32 { return a * w; }";

impl Kernel {
    /// Whether the kernel has an f16-weights variant (its weight operand typed `WT`).
    pub fn has_f16_weights(&self) -> bool {
        self.source.contains(WEIGHTS_F32)
    }

    /// The f16-weights variant: weights stored in f16 (needs SHADER_F16), products through
    /// `product` in f16, sums unchanged (f32).
    pub fn f16_weights_source(&self) -> String {
        assert!(self.has_f16_weights(), "{} has no f16-weights variant", self.name);
        let s = self.source.replace(WEIGHTS_F32, "alias WT = f16;").replace(PRODUCT_F32, "fn product(a: f32, w: WT) -> f32 { return f32(f16(a) * w); }");
        format!("enable f16;\n{s}")
    }
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
    DECODE_LINEAR => "decode_linear",
    DECODE_QKV => "decode_qkv",
    DECODE_ROPE_KV => "decode_rope_kv",
    DECODE_GATE_UP => "decode_gate_up",
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
    SAMPLE => "sample",
    ADAMW => "adamw",
    GRAD_NORM_PARTIAL => "grad_norm_partial",
    GRAD_NORM_FINISH => "grad_norm_finish",
    GRAD_SCALE => "grad_scale",
}
