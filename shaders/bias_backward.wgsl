// dbias[j] += sum_r dout[r, j]; dout is [rows, n]. One invocation per column.
struct Params { rows: u32, n: u32 }

@group(0) @binding(0) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * 64u;
    if (j < p.n) {
        var acc = 0.0;
        for (var r = 0u; r < p.rows; r++) { acc += dout[r * p.n + j]; }
        dbias[j] += acc;
    }
}
