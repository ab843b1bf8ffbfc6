// Attention backward, part 1: dq (overwrite) and delta[r, h] = dout[r, h] · out[r, h], which
// part 2 (attention_backward_dkdv.wgsl) needs. Probabilities are recomputed from the saved lse:
// p_rj = exp(scale q_r·k_j - lse_r), dq_r = scale Σ_j p_rj (dout_r·v_j - delta_r) k_j.
// Shapes as in attention_forward.wgsl, and its tiling: a workgroup holds ITEMS (row, head)
// items (BQ rows x the GROUP query heads of one KV head), their q and dout in workgroup memory,
// and walks the keys the block sees in tiles of K and V; LANES threads per item each score
// their share of a tile's keys (both dot products), then accumulate their share of dq's
// columns (lane, lane + LANES, ...).
const WG: u32 = 64u;

override HEAD_DIM: u32 = 64u;
override GROUP: u32 = 1u;
override KV_TILE: u32 = 16u;
override LANES: u32 = 4u;
override ITEMS: u32 = 64u / LANES;

struct Params { rows: u32, hq: u32, hkv: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> dq: array<f32>;
@group(0) @binding(1) var<storage, read_write> delta: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> out: array<f32>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read> start: array<u32>;
@group(0) @binding(9) var<uniform> p: Params;

var<workgroup> qs: array<f32, ITEMS * HEAD_DIM>;
var<workgroup> dos: array<f32, ITEMS * HEAD_DIM>;
var<workgroup> ks: array<f32, KV_TILE * HEAD_DIM>;
var<workgroup> vs: array<f32, KV_TILE * HEAD_DIM>;
#include "kv_tile"
var<workgroup> ds: array<f32, ITEMS * KV_TILE>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bq = ITEMS / GROUP;
    let i0 = wg.x * bq;
    let h0 = wg.y * GROUP;
    let kvh = h0 / (p.hq / p.hkv);
    let t = lid.x;
    let item = t / LANES;
    let lane = t % LANES;
    let row = i0 + item / GROUP;
    let head = h0 + item % GROUP;
    let live = item < bq * GROUP && row < p.rows;
    let last = min(i0 + bq, p.rows) - 1u;
    let k_begin = start[i0];
    for (var e = t; e < ITEMS * HEAD_DIM; e += WG) {
        let it = e / HEAD_DIM;
        let r = i0 + it / GROUP;
        var qx = 0.0;
        var dx = 0.0;
        if (it < bq * GROUP && r < p.rows) {
            let o = (r * p.hq + h0 + it % GROUP) * HEAD_DIM + e % HEAD_DIM;
            qx = q[o];
            dx = dout[o];
        }
        qs[e] = qx;
        dos[e] = dx;
    }
    var first = 0u;
    var lse_i = 0.0;
    var di = 0.0;
    if (live) {
        first = start[row];
        lse_i = lse[row * p.hq + head];
        let o = (row * p.hq + head) * HEAD_DIM;
        for (var x = 0u; x < HEAD_DIM; x++) { di = fma(dout[o + x], out[o + x], di); }
        if (lane == 0u) { delta[row * p.hq + head] = di; }
    }
    var acc: array<f32, 32>; // HEAD_DIM / LANES <= 32 columns
    for (var kt = k_begin; kt <= last; kt += KV_TILE) {
        load_kv_tile(t, kt, last, kvh);
        workgroupBarrier();
        for (var jj = lane; jj < KV_TILE; jj += LANES) {
            let j = kt + jj;
            var g = 0.0;
            if (live && j >= first && j <= row) {
                var s = 0.0;
                var dp = 0.0;
                for (var x = 0u; x < HEAD_DIM; x++) {
                    s = fma(qs[item * HEAD_DIM + x], ks[jj * HEAD_DIM + x], s);
                    dp = fma(dos[item * HEAD_DIM + x], vs[jj * HEAD_DIM + x], dp);
                }
                g = p.scale * exp(p.scale * s - lse_i) * (dp - di);
            }
            ds[item * KV_TILE + jj] = g;
        }
        workgroupBarrier();
        if (live) {
            for (var jj = 0u; jj < KV_TILE; jj++) {
                let g = ds[item * KV_TILE + jj];
                for (var c = 0u; c < HEAD_DIM / LANES; c++) { acc[c] = fma(g, ks[jj * HEAD_DIM + lane + c * LANES], acc[c]); }
            }
        }
        workgroupBarrier();
    }
    if (live) {
        for (var c = 0u; c < HEAD_DIM / LANES; c++) { dq[(row * p.hq + head) * HEAD_DIM + lane + c * LANES] = acc[c]; }
    }
}
