// Decoding's gated MLP input: out[m, f] = silu(A · Wgᵀ) * (A · Wuᵀ) for few rows (m <= ROWS),
// the gate and up projections and SwiGLU in one pass. Column j reads row j of both weights once,
// as vec4, for every row of A, split over SPLIT threads (include/split_reduce.wgsl). Wg, Wu are
// [f, k]; k a multiple of 4.
// The f16-weights variant stores the weights in f16; products and sums stay f32.
alias WT = f32;

override ROWS: u32 = 8u;
override SPLIT: u32 = 1u;
#include "split_reduce"

struct Params { m: u32, f: u32, k4: u32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w_gate: array<vec4<WT>>;
@group(0) @binding(3) var<storage, read> w_up: array<vec4<WT>>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let j = (wg.x + wg.y * nwg.x) * (64u / SPLIT) + t / SPLIT;
    var g: array<f32, 32>;
    var u: array<f32, 32>;
    if (j < p.f) {
        let row = j * p.k4;
        for (var q = t % SPLIT; q < p.k4; q += SPLIT) {
            let gv = vec4<f32>(w_gate[row + q]);
            let uv = vec4<f32>(w_up[row + q]);
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) {
                    let x = a[r * p.k4 + q];
                    g[r] += dot(x, gv);
                    u[r] += dot(x, uv);
                }
            }
        }
    }
    split_reduce(t, &g);
    split_reduce(t, &u);
    if (j >= p.f || t % SPLIT != 0u) { return; }
    for (var r = 0u; r < ROWS; r++) {
        if (r < p.m) { out[r * p.f + j] = g[r] / (1.0 + exp(-g[r])) * u[r]; }
    }
}
