// lse[r] = log Σ_j exp(logits[r, j]); logprob[r] = logits[r, targets[r]] - lse[r].
// logits [rows, V]. One workgroup of 256 per row: max, then the sum of exponentials.
// Rows row0 .. row0 + rows of a window of logits that starts at element off.
struct Params { rows: u32, v: u32, row0: u32, off: u32 }

@group(0) @binding(0) var<storage, read_write> logprob: array<f32>;
@group(0) @binding(1) var<storage, read_write> lse: array<f32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 256u;
#include "reduce"

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let local = wg.x + wg.y * nwg.x;
    let r = p.row0 + local;
    let t = lid.x;
    let base = p.off + local * p.v;
    var mx = -3.0e38;
    if (local < p.rows) {
        for (var j = t; j < p.v; j += 256u) { mx = max(mx, logits[base + j]); }
    }
    let row_max = workgroup_max(t, mx);
    var sum = 0.0;
    if (local < p.rows) {
        for (var j = t; j < p.v; j += 256u) { sum += exp(logits[base + j] - row_max); }
    }
    let total = workgroup_sum(t, sum);
    if (local < p.rows && t == 0u) {
        let l = row_max + log(total);
        lse[r] = l;
        logprob[r] = logits[base + targets[r]] - l;
    }
}
