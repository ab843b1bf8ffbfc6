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

/// Pieces of WGSL written once and spliced in where a kernel has the line `#include "name"`
/// (WGSL has no includes): (name, workgroup-memory version, subgroup version if any).
const INCLUDES: &[(&str, &str, Option<&str>)] = &[
    ("reduce", include_str!("../../../shaders/include/reduce.wgsl"), Some(include_str!("../../../shaders/include/reduce_subgroup.wgsl"))),
    ("split_reduce", include_str!("../../../shaders/include/split_reduce.wgsl"), None),
    ("kv_tile", include_str!("../../../shaders/include/kv_tile.wgsl"), None),
    ("matmul_params", include_str!("../../../shaders/include/matmul_params.wgsl"), None),
    ("column_sum", include_str!("../../../shaders/include/column_sum.wgsl"), None),
];

/// Which variant of a kernel to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Variant {
    /// Weights stored in f16, products in f16, sums in f32 (needs SHADER_F16; only kernels
    /// whose weight operand is typed `WT`).
    pub f16_weights: bool,
    /// Shared snippets in their subgroup version where they have one (needs SUBGROUP).
    pub subgroups: bool,
}

impl Kernel {
    /// Whether the kernel has an f16-weights variant (its weight operand typed `WT`).
    pub fn has_f16_weights(&self) -> bool {
        self.source.contains(WEIGHTS_F32)
    }

    /// Whether the kernel includes a snippet that has a subgroup version.
    pub fn uses_subgroups(&self) -> bool {
        INCLUDES.iter().any(|(name, _, sub)| sub.is_some() && self.source.contains(&format!("#include \"{name}\"")))
    }

    /// The WGSL of a variant, includes expanded.
    pub fn wgsl(&self, variant: Variant) -> String {
        let mut out = String::with_capacity(self.source.len() * 2);
        for line in self.source.lines() {
            if let Some(rest) = line.trim().strip_prefix("#include ") {
                let name = rest.trim().trim_matches('"');
                let (_, shared, sub) = INCLUDES.iter().find(|(n, _, _)| *n == name).unwrap_or_else(|| panic!("{}: no shader include {name:?}", self.name));
                out += if variant.subgroups { sub.unwrap_or(shared) } else { shared };
            } else {
                out += line;
            }
            out.push('\n');
        }
        if variant.f16_weights {
            assert!(self.has_f16_weights(), "{} has no f16-weights variant", self.name);
            out = format!("enable f16;\n{}", out.replace(WEIGHTS_F32, "alias WT = f16;").replace(PRODUCT_F32, "fn product(a: f32, w: WT) -> f32 { return f32(f16(a) * w); }"));
        }
        out
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
    MATMUL_REDUCE => "matmul_reduce",
    MATMUL_COOP => "matmul_coop",
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
    ATTENTION_DECODE_COMBINE => "attention_decode_combine",
    KV_WRITE => "kv_write",
    LOGPROB_FORWARD => "logprob_forward",
    LOGPROB_BACKWARD => "logprob_backward",
    SAMPLE => "sample",
    ADAMW => "adamw",
    GRAD_NORM_PARTIAL => "grad_norm_partial",
    GRAD_NORM_FINISH => "grad_norm_finish",
    GRAD_SCALE => "grad_scale",
}
