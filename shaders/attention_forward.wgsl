// Causal self-attention over packed sequences with grouped-query heads (training and prefill).
// q, out [rows, HQ * D]; k, v [rows, HKV * D]; start[r] = first row of r's sequence; row r sees
// rows start[r] ..= r. lse [rows, HQ] = log-sum-exp of the scaled scores, saved for backward.
// One invocation per (row, query head), online softmax; head_dim up to 256.
struct Params { rows: u32, hq: u32, hkv: u32, d: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read_write> lse: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> start: array<u32>;
@group(0) @binding(6) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = gid.x + gid.y * nwg.x * 64u;
    if (item >= p.rows * p.hq) { return; }
    let i = item / p.hq;
    let h = item % p.hq;
    let kvh = h / (p.hq / p.hkv);
    let qo = i * p.hq * p.d + h * p.d;
    var acc: array<f32, 256>;
    var m = -3.0e38;
    var l = 0.0;
    for (var j = start[i]; j <= i; j++) {
        let ko = j * p.hkv * p.d + kvh * p.d;
        var s = 0.0;
        for (var t = 0u; t < p.d; t++) { s = fma(q[qo + t], k[ko + t], s); }
        s *= p.scale;
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * corr + e;
        for (var t = 0u; t < p.d; t++) { acc[t] = acc[t] * corr + e * v[ko + t]; }
        m = m_new;
    }
    for (var t = 0u; t < p.d; t++) { out[qo + t] = acc[t] / l; }
    lse[item] = m + log(l);
}
