// Global-norm clipping, step 1: partial[offset + g] = Σ x² over workgroup g's 4096 elements.
struct Params { n: u32, offset: u32 }

@group(0) @binding(0) var<storage, read_write> partial_out: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
#include "reduce"

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let base = wg.x * 4096u;
    var acc = 0.0;
    for (var e = 0u; e < 16u; e++) {
        let i = base + e * 256u + t;
        if (i < p.n) { acc = fma(x[i], x[i], acc); }
    }
    let total = workgroup_sum(t, acc);
    if (t == 0u) { partial_out[p.offset + wg.x] = total; }
}
