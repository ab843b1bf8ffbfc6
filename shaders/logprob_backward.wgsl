// dlogits[r, j] = g_r ([j == target_r] - softmax(logits[r])_j) with g = dlogprob; overwrite.
// Rows row0 .. row0 + rows of windows of logits and dlogits that start at element off.
struct Params { rows: u32, v: u32, row0: u32, off: u32 }

@group(0) @binding(0) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(1) var<storage, read> dlogprob: array<f32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<u32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < p.rows * p.v) {
        let r = p.row0 + i / p.v;
        let g = dlogprob[r];
        var d = -g * exp(logits[p.off + i] - lse[r]);
        if (i % p.v == targets[r]) { d += g; }
        dlogits[p.off + i] = d;
    }
}
