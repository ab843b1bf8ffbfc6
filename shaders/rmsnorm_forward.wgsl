// out[r, :] = x[r, :] * rstd[r] * w, rstd[r] = 1 / sqrt(mean(x[r, :]^2) + eps).
// x, out [rows, d]; rstd [rows] is saved for backward. One workgroup of 64 per row.
struct Params { rows: u32, d: u32, eps: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 64u;
#include "reduce"

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wg.x + wg.y * nwg.x;
    let t = lid.x;
    let base = r * p.d;
    var acc = 0.0;
    if (r < p.rows) {
        for (var j = t; j < p.d; j += 64u) { let v = x[base + j]; acc = fma(v, v, acc); }
    }
    let total = workgroup_sum(t, acc);
    if (r < p.rows) {
        let s = 1.0 / sqrt(total / f32(p.d) + p.eps);
        for (var j = t; j < p.d; j += 64u) { out[base + j] = x[base + j] * s * w[j]; }
        if (t == 0u) { rstd[r] = s; }
    }
}
