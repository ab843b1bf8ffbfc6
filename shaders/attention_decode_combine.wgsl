// Flash decoding, step 2: out[r, h, :] = Σ_c w_c part[r, h, c, :] with w_c = exp(lse_c - LSE),
// LSE = log Σ_c exp(lse_c): the chunks' normalized outputs weighed by their share of the
// softmax mass (layout of part in attention_decode.wgsl). One invocation per output.
struct Params { rows: u32, hq: u32, d: u32, chunks: u32, lse_at: u32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    if (e >= p.rows * p.hq * p.d) { return; }
    let row_head = e / p.d;
    let x = e % p.d;
    let lse = p.lse_at + row_head * p.chunks;
    var mx = -3.0e38;
    for (var c = 0u; c < p.chunks; c++) { mx = max(mx, part[lse + c]); }
    var sum = 0.0;
    var o = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        let w = exp(part[lse + c] - mx);
        sum += w;
        o = fma(w, part[(row_head * p.chunks + c) * p.d + x], o);
    }
    out[e] = o / sum;
}
