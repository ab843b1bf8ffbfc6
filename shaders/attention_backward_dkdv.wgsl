// Attention backward, part 2: dk, dv (overwrite). Key row j is seen by rows j .. end[j] - 1 of
// its sequence through every query head of its group:
// dk_j = scale Σ_{r,h} p_rj (dout_r·v_j - delta_r) q_r,  dv_j = Σ_{r,h} p_rj dout_r.
// One invocation per (key row, kv head).
struct Params { rows: u32, hq: u32, hkv: u32, d: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> dk: array<f32>;
@group(0) @binding(1) var<storage, read_write> dv: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read> end: array<u32>;
@group(0) @binding(9) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = gid.x + gid.y * nwg.x * 64u;
    if (item >= p.rows * p.hkv) { return; }
    let j = item / p.hkv;
    let kvh = item % p.hkv;
    let group = p.hq / p.hkv;
    let ko = j * p.hkv * p.d + kvh * p.d;
    var dk_acc: array<f32, 256>;
    var dv_acc: array<f32, 256>;
    for (var i = j; i < end[j]; i++) {
        for (var h = kvh * group; h < (kvh + 1u) * group; h++) {
            let qo = i * p.hq * p.d + h * p.d;
            var s = 0.0;
            var dp = 0.0;
            for (var t = 0u; t < p.d; t++) {
                s = fma(q[qo + t], k[ko + t], s);
                dp = fma(dout[qo + t], v[ko + t], dp);
            }
            let pij = exp(p.scale * s - lse[i * p.hq + h]);
            let ds = p.scale * pij * (dp - delta[i * p.hq + h]);
            for (var t = 0u; t < p.d; t++) {
                dk_acc[t] = fma(ds, q[qo + t], dk_acc[t]);
                dv_acc[t] = fma(pij, dout[qo + t], dv_acc[t]);
            }
        }
    }
    for (var t = 0u; t < p.d; t++) {
        dk[ko + t] = dk_acc[t];
        dv[ko + t] = dv_acc[t];
    }
}
