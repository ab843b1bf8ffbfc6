// Decoding's attention input: qkv[m, qd + 2 kd] = A · [Wq; Wk; Wv]ᵀ (+ [bq; bk; bv]) for few
// rows (m <= ROWS), the three projections in one pass: column j reads row j of [Wq; Wk; Wv]
// once, as vec4, for every row of A, split over SPLIT threads (include/split_reduce.wgsl); k a
// multiple of 4.
// The f16-weights variant stores the weights in f16; products and sums stay f32.
alias WT = f32;

override ROWS: u32 = 8u;
override BIAS: bool = false;
override SPLIT: u32 = 1u;
#include "split_reduce"

struct Params { m: u32, qd: u32, kd: u32, k4: u32 }

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wq: array<vec4<WT>>;
@group(0) @binding(3) var<storage, read> wk: array<vec4<WT>>;
@group(0) @binding(4) var<storage, read> wv: array<vec4<WT>>;
@group(0) @binding(5) var<storage, read> bq: array<f32>;
@group(0) @binding(6) var<storage, read> bk: array<f32>;
@group(0) @binding(7) var<storage, read> bv: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

fn weight(j: u32, q: u32) -> vec4<f32> {
    if (j < p.qd) { return vec4<f32>(wq[j * p.k4 + q]); }
    if (j < p.qd + p.kd) { return vec4<f32>(wk[(j - p.qd) * p.k4 + q]); }
    return vec4<f32>(wv[(j - p.qd - p.kd) * p.k4 + q]);
}

fn bias(j: u32) -> f32 {
    if (j < p.qd) { return bq[j]; }
    if (j < p.qd + p.kd) { return bk[j - p.qd]; }
    return bv[j - p.qd - p.kd];
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let j = (wg.x + wg.y * nwg.x) * (64u / SPLIT) + t / SPLIT;
    let width = p.qd + 2u * p.kd;
    var acc: array<f32, 32>;
    if (j < width) {
        for (var q = t % SPLIT; q < p.k4; q += SPLIT) {
            let wv4 = weight(j, q);
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) { acc[r] += dot(a[r * p.k4 + q], wv4); }
            }
        }
    }
    split_reduce(t, &acc);
    if (j >= width || t % SPLIT != 0u) { return; }
    var b = 0.0;
    if (BIAS) { b = bias(j); }
    for (var r = 0u; r < ROWS; r++) {
        if (r < p.m) { qkv[r * width + j] = acc[r] + b; }
    }
}
