// Rotary embedding in place, rotate-half convention: for each head of x [rows, heads, 2h] at
// position pos[r], (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) with SIGN = 1 (forward);
// SIGN = -1 rotates back, which is the backward (the rotation is orthogonal).
// cos, sin [max_pos, h].
override SIGN: f32 = 1.0;

struct Params { rows: u32, heads: u32, half: u32 }

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<u32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < p.rows * p.heads * p.half) {
        let j = i % p.half;
        let rh = i / p.half; // row * heads + head
        let r = rh / p.heads;
        let base = rh * 2u * p.half;
        let c = cos_t[pos[r] * p.half + j];
        let s = SIGN * sin_t[pos[r] * p.half + j];
        let x1 = x[base + j];
        let x2 = x[base + p.half + j];
        x[base + j] = x1 * c - x2 * s;
        x[base + p.half + j] = x2 * c + x1 * s;
    }
}
