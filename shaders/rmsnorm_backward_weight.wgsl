// dw[j] += sum_r dout[r, j] * x[r, j] * rstd[r]; parameter gradient, accumulates.
// The rows may be heads of several tokens (Qwen3 q/k norm): rows = tokens * heads.
struct Params { rows: u32, d: u32 }

@group(0) @binding(0) var<storage, read_write> dw: array<f32>;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> partial: array<f32, 64>;

// One workgroup per column j, 64 threads striding over rows.
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wg.x + wg.y * nwg.x;
    let t = lid.x;
    var acc = 0.0;
    if (j < p.d) {
        for (var r = t; r < p.rows; r += 64u) { acc += dout[r * p.d + j] * x[r * p.d + j] * rstd[r]; }
    }
    partial[t] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (t < s) { partial[t] += partial[t + s]; }
        workgroupBarrier();
    }
    if (j < p.d && t == 0u) { dw[j] += partial[0]; }
}
