// Stores new keys and values in the paged cache: cache[slot[r], :] = x[r, :] for k and v.
// x [rows, width]; cache [slots, width].
struct Params { rows: u32, width: u32 }

@group(0) @binding(0) var<storage, read_write> cache_k: array<f32>;
@group(0) @binding(1) var<storage, read_write> cache_v: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> slot: array<u32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < p.rows * p.width) {
        let r = i / p.width;
        let o = slot[r] * p.width + i % p.width;
        cache_k[o] = k[i];
        cache_v[o] = v[i];
    }
}
