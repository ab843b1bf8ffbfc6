// Attention of new rows against a paged KV cache (decoding, prefill, tool responses).
// q, out [rows, HQ * D]; cache_k, cache_v [slots, HKV * D] hold the keys and values of every
// sequence in blocks of BLOCK slots; row r sees its sequence's first len[r] positions, whose
// blocks are table[table_off[r] ..]. One invocation per (row, query head), online softmax.
const BLOCK: u32 = 16u;

struct Params { rows: u32, hq: u32, hkv: u32, d: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> cache_k: array<f32>;
@group(0) @binding(3) var<storage, read> cache_v: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read> table_off: array<u32>;
@group(0) @binding(6) var<storage, read> len: array<u32>;
@group(0) @binding(7) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = gid.x + gid.y * nwg.x * 64u;
    if (item >= p.rows * p.hq) { return; }
    let r = item / p.hq;
    let h = item % p.hq;
    let kvh = h / (p.hq / p.hkv);
    let qo = r * p.hq * p.d + h * p.d;
    var acc: array<f32, 256>;
    var m = -3.0e38;
    var l = 0.0;
    for (var j = 0u; j < len[r]; j++) {
        let slot = table[table_off[r] + j / BLOCK] * BLOCK + j % BLOCK;
        let ko = slot * p.hkv * p.d + kvh * p.d;
        var s = 0.0;
        for (var t = 0u; t < p.d; t++) { s = fma(q[qo + t], cache_k[ko + t], s); }
        s *= p.scale;
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * corr + e;
        for (var t = 0u; t < p.d; t++) { acc[t] = acc[t] * corr + e * cache_v[ko + t]; }
        m = m_new;
    }
    for (var t = 0u; t < p.d; t++) { out[qo + t] = acc[t] / l; }
}
