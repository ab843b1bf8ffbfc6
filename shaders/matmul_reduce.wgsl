// Split-K matmul, step 2: C[i, j] (+)= Σ_z partial[z, i, j], partial [splits, m, n] as
// matmul.wgsl's SPLIT_K mode leaves it; C[i, j] = c[c_off + i * ldc + j].
struct Params { m: u32, n: u32, splits: u32, accumulate: u32, c_off: u32, ldc: u32 }

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    if (e >= p.m * p.n) { return; }
    var v = 0.0;
    for (var z = 0u; z < p.splits; z++) { v += partial[z * p.m * p.n + e]; }
    let o = p.c_off + (e / p.n) * p.ldc + e % p.n;
    if (p.accumulate != 0u) { v += c[o]; }
    c[o] = v;
}
