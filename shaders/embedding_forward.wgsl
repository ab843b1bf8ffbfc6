// out[r, t] = wte[ids[r * ID_STRIDE], t]; out is [rows, d], wte is [vocab, d]. A large table
// comes in windows of rows id_lo .. id_hi (starting at w_off); each dispatch writes the rows
// whose id it holds. ID_STRIDE = 2 reads the sampler's (token, log-prob) pairs in place.
override ID_STRIDE: u32 = 1u;

struct Params { rows: u32, d: u32, id_lo: u32, id_hi: u32, w_off: u32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> wte: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < p.rows * p.d) {
        let id = ids[(i / p.d) * ID_STRIDE];
        if (id >= p.id_lo && id < p.id_hi) {
            out[i] = wte[p.w_off + (id - p.id_lo) * p.d + i % p.d];
        }
    }
}
