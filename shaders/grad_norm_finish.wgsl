// Global-norm clipping, step 2: result = [norm, coef] with norm = sqrt(Σ partial) and
// coef = min(1, max_norm / (norm + 1e-6)). One workgroup.
struct Params { count: u32, max_norm: f32 }

@group(0) @binding(0) var<storage, read_write> result: array<f32>;
@group(0) @binding(1) var<storage, read> partial_in: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
#include "reduce"

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var acc = 0.0;
    for (var i = t; i < p.count; i += 256u) { acc += partial_in[i]; }
    let total = workgroup_sum(t, acc);
    if (t == 0u) {
        let norm = sqrt(total);
        result[0] = norm;
        result[1] = min(1.0, p.max_norm / (norm + 1e-6));
    }
}
