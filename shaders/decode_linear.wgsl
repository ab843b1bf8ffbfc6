// Decoding's linear layer: C[m, n] = A[m, k] · Wᵀ (+ bias[n]) for few rows (m <= ROWS), or
// C += that (RESIDUAL: the o and down projections add into the residual stream in place).
// SPLIT threads per output column j stride along W's row j (read once, as vec4, for every row
// of A), then sum their partials (include/split_reduce.wgsl). W is [n, k] row-major; k is a
// multiple of 4.
// The f16-weights variant (see kernels.rs) stores W in f16; products and sums stay f32.
alias WT = f32;

override ROWS: u32 = 8u;
override BIAS: bool = false;
override RESIDUAL: bool = false;
// Threads per output column: 16 on GPUs (coalesced weight reads), 1 on CPU adapters.
override SPLIT: u32 = 1u;
#include "split_reduce"

// Windows of a large W: columns j of this dispatch are W rows from w_off (in vec4), written to
// c[c_off + row * ldc + j]; bias[j] from b_off.
struct Params { m: u32, n: u32, k4: u32, ldc: u32, w_off: u32, c_off: u32, b_off: u32 }

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<WT>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let j = (wg.x + wg.y * nwg.x) * (64u / SPLIT) + t / SPLIT;
    var acc: array<f32, 32>;
    if (j < p.n) {
        let row = p.w_off + j * p.k4;
        for (var q = t % SPLIT; q < p.k4; q += SPLIT) {
            let wv = vec4<f32>(w[row + q]);
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) { acc[r] += dot(a[r * p.k4 + q], wv); }
            }
        }
    }
    split_reduce(t, &acc);
    if (j >= p.n || t % SPLIT != 0u) { return; }
    var b = 0.0;
    if (BIAS) { b = bias[p.b_off + j]; }
    for (var r = 0u; r < ROWS; r++) {
        if (r < p.m) {
            let i = p.c_off + r * p.ldc + j;
            if (RESIDUAL) { c[i] += acc[r] + b; } else { c[i] = acc[r] + b; }
        }
    }
}
