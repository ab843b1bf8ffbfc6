// Attention backward, part 1: dq (overwrite) and delta[r, h] = dout[r, h] · out[r, h], which
// part 2 (attention_backward_dkdv.wgsl) needs. Probabilities are recomputed from the saved lse:
// p_rj = exp(scale q_r·k_j - lse_r), dq_r = scale Σ_j p_rj (dout_r·v_j - delta_r) k_j.
// Shapes as in attention_forward.wgsl. One invocation per (row, query head).
struct Params { rows: u32, hq: u32, hkv: u32, d: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> dq: array<f32>;
@group(0) @binding(1) var<storage, read_write> delta: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> out: array<f32>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read> start: array<u32>;
@group(0) @binding(9) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = gid.x + gid.y * nwg.x * 64u;
    if (item >= p.rows * p.hq) { return; }
    let i = item / p.hq;
    let h = item % p.hq;
    let kvh = h / (p.hq / p.hkv);
    let qo = i * p.hq * p.d + h * p.d;
    var di = 0.0;
    for (var t = 0u; t < p.d; t++) { di = fma(dout[qo + t], out[qo + t], di); }
    delta[item] = di;
    let lse_i = lse[item];
    var acc: array<f32, 256>;
    for (var j = start[i]; j <= i; j++) {
        let ko = j * p.hkv * p.d + kvh * p.d;
        var s = 0.0;
        var dp = 0.0;
        for (var t = 0u; t < p.d; t++) {
            s = fma(q[qo + t], k[ko + t], s);
            dp = fma(dout[qo + t], v[ko + t], dp);
        }
        let pij = exp(p.scale * s - lse_i);
        let ds = p.scale * pij * (dp - di);
        for (var t = 0u; t < p.d; t++) { acc[t] = fma(ds, k[ko + t], acc[t]); }
    }
    for (var t = 0u; t < p.d; t++) { dq[qo + t] = acc[t]; }
}
