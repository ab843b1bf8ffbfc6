// Decoding's attention set-up after the fused projection: for every row r and head of
// qkv [m, qd + 2 kd] (query heads, then key heads): Qwen3's per-head RMSNorm when QK_NORM,
// the rotary embedding at position pos[r] (rotate-half), then query heads go to q [m, qd] and
// key heads, with their value heads, into the paged cache at slot[r]. One invocation per
// (row, head) over a whole head (d <= 256).
override QK_NORM: bool = false;

struct Params { m: u32, hq: u32, hkv: u32, d: u32, eps: f32 }

@group(0) @binding(0) var<storage, read_write> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> cache_k: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache_v: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<u32>;
@group(0) @binding(5) var<storage, read> slot: array<u32>;
@group(0) @binding(6) var<storage, read> cos_t: array<f32>;
@group(0) @binding(7) var<storage, read> sin_t: array<f32>;
@group(0) @binding(8) var<storage, read> q_norm: array<f32>;
@group(0) @binding(9) var<storage, read> k_norm: array<f32>;
@group(0) @binding(10) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = gid.x + gid.y * nwg.x * 64u;
    let heads = p.hq + p.hkv;
    if (item >= p.m * heads) { return; }
    let r = item / heads;
    let h = item % heads;
    let qd = p.hq * p.d;
    let kd = p.hkv * p.d;
    let width = qd + 2u * kd;
    let src = r * width + h * p.d;
    let is_q = h < p.hq;
    var scale = 1.0;
    if (QK_NORM) {
        var ss = 0.0;
        for (var t = 0u; t < p.d; t++) { let x = qkv[src + t]; ss = fma(x, x, ss); }
        scale = 1.0 / sqrt(ss / f32(p.d) + p.eps);
    }
    let half = p.d / 2u;
    let tab = pos[r] * half;
    var dst = r * qd + h * p.d;
    if (!is_q) { dst = slot[r] * kd + (h - p.hq) * p.d; }
    for (var t = 0u; t < half; t++) {
        var x1 = qkv[src + t] * scale;
        var x2 = qkv[src + half + t] * scale;
        if (QK_NORM) {
            if (is_q) { x1 *= q_norm[t]; x2 *= q_norm[half + t]; } else { x1 *= k_norm[t]; x2 *= k_norm[half + t]; }
        }
        let c = cos_t[tab + t];
        let s = sin_t[tab + t];
        let y1 = x1 * c - x2 * s;
        let y2 = x2 * c + x1 * s;
        if (is_q) { q[dst + t] = y1; q[dst + half + t] = y2; } else { cache_k[dst + t] = y1; cache_k[dst + half + t] = y2; }
    }
    if (!is_q) {
        let vsrc = r * width + qd + kd + (h - p.hq) * p.d;
        for (var t = 0u; t < p.d; t++) { cache_v[dst + t] = qkv[vsrc + t]; }
    }
}
