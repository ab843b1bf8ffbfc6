// dwte[tok, t] += sum of dout[r, t] over the rows r holding token tok. WGSL has no float
// atomics, so the host groups rows by token: distinct token u is tokens[u], its rows are
// order[first[u] .. first[u + 1]]. One invocation per (distinct token, t); no two write alike.
// A large table comes in windows: row tokens[u] is at w_off + (tokens[u] - id_lo) * d.
struct Params { distinct: u32, d: u32, id_lo: u32, w_off: u32 }

@group(0) @binding(0) var<storage, read_write> dwte: array<f32>;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> first: array<u32>;
@group(0) @binding(4) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < p.distinct * p.d) {
        let u = i / p.d;
        let t = i % p.d;
        var acc = 0.0;
        for (var q = first[u]; q < first[u + 1u]; q++) { acc += dout[order[q] * p.d + t]; }
        dwte[p.w_off + (tokens[u] - p.id_lo) * p.d + t] += acc;
    }
}
