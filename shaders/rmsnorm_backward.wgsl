// dx[r, :] = rstd * (dout * w - x * rstd^2 * mean(dout * w * x)); activation gradient, overwrites.
// dout, x, dx [rows, d]; w [d]; rstd [rows]. One workgroup of 64 per row.
// The weight gradient is rmsnorm_backward_weight.wgsl.
struct Params { rows: u32, d: u32 }

@group(0) @binding(0) var<storage, read_write> dx: array<f32>;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 64u;
#include "reduce"

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wg.x + wg.y * nwg.x;
    let t = lid.x;
    let base = r * p.d;
    var acc = 0.0;
    if (r < p.rows) {
        for (var j = t; j < p.d; j += 64u) { acc += dout[base + j] * w[j] * x[base + j]; }
    }
    let total = workgroup_sum(t, acc);
    if (r < p.rows) {
        let dot = total / f32(p.d);
        let s = rstd[r];
        for (var j = t; j < p.d; j += 64u) {
            dx[base + j] = s * (dout[base + j] * w[j] - x[base + j] * s * s * dot);
        }
    }
}
