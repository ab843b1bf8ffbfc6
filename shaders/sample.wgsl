// Draws one token per row from softmax(logits[r] / T) by inverse CDF in vocabulary order, with
// the uniform u[r] in [0, 1) that the host drew from the trajectory's own generator (so a
// rollout stays seeded); greedy (arg-max, log-prob 0) when T <= 0. Only the draws come back:
// out[2r] = token, out[2r + 1] = bits of its log-probability under that distribution.
// logits [rows, V]; one workgroup of 256 per row, each thread a contiguous slice of V.
struct Params { rows: u32, v: u32, temperature: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> best: array<f32, 256>;
var<workgroup> best_at: array<u32, 256>;
var<workgroup> sums: array<f32, 256>;
var<workgroup> pick: vec2<f32>; // (slice holding the draw, what is left of it there)

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wg.x + wg.y * nwg.x;
    let t = lid.x;
    let base = r * p.v;
    let slice = (p.v + 255u) / 256u;
    let lo = min(t * slice, p.v);
    let hi = min(lo + slice, p.v);
    var mx = -3.0e38;
    var at = 0u;
    if (r < p.rows) {
        for (var j = lo; j < hi; j++) {
            let l = logits[base + j];
            if (l > mx) { mx = l; at = j; }
        }
    }
    best[t] = mx;
    best_at[t] = at;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        // Ties go to the lower index, as on the host.
        if (t < s && (best[t + s] > best[t] || (best[t + s] == best[t] && best_at[t + s] < best_at[t]))) {
            best[t] = best[t + s];
            best_at[t] = best_at[t + s];
        }
        workgroupBarrier();
    }
    let row_max = best[0];
    if (p.temperature <= 0.0) {
        if (r < p.rows && t == 0u) {
            out[2u * r] = best_at[0];
            out[2u * r + 1u] = bitcast<u32>(0.0);
        }
        return;
    }
    let inv_t = 1.0 / p.temperature;
    var s_t = 0.0;
    if (r < p.rows) {
        for (var j = lo; j < hi; j++) { s_t += exp((logits[base + j] - row_max) * inv_t); }
    }
    sums[t] = s_t;
    workgroupBarrier();
    if (t == 0u) {
        var total = 0.0;
        for (var i = 0u; i < 256u; i++) { total += sums[i]; }
        var goal = 0.0;
        if (r < p.rows) { goal = u[r] * total; }
        var c = 255u;
        for (var i = 0u; i < 256u; i++) {
            if (goal < sums[i]) { c = i; break; }
            goal -= sums[i];
        }
        pick = vec2<f32>(f32(c), goal);
        sums[0] = total;
    }
    workgroupBarrier();
    let total = sums[0];
    if (r < p.rows && t == u32(pick.x)) {
        var left = pick.y;
        var token = p.v - 1u;
        for (var j = lo; j < hi; j++) {
            let q = exp((logits[base + j] - row_max) * inv_t);
            if (left < q) { token = j; break; }
            left -= q;
        }
        out[2u * r] = token;
        out[2u * r + 1u] = bitcast<u32>((logits[base + token] - row_max) * inv_t - log(total));
    }
}
