// Causal self-attention over packed sequences with grouped-query heads (training and prefill),
// FlashAttention-2 style. q, out [rows, HQ * D]; k, v [rows, HKV * D]; start[r] = first row of
// r's sequence (non-decreasing); row r sees rows start[r] ..= r. lse [rows, HQ] = log-sum-exp
// of the scaled scores, saved for backward.
// Workgroup (b, y): ITEMS (row, head) pairs, BQ consecutive rows x the GROUP query heads
// y GROUP .. that share one KV head. The keys the block sees go through workgroup memory in
// tiles of KV_TILE rows of K and V, read once for all its items; LANES threads per item: each
// scores its share of the tile's keys against the item's query (kept in workgroup memory),
// then all of them update the item's online softmax (identically) and accumulate their share
// of its head dimensions (columns lane, lane + LANES, ...).
const WG: u32 = 64u;

override HEAD_DIM: u32 = 64u;
// Threads per (row, head) item: 4, or 8 for heads over 128 values; ITEMS of them per workgroup.
override LANES: u32 = 4u;
override ITEMS: u32 = 64u / LANES;
override GROUP: u32 = 1u;
// Keys per tile: KV_TILE * HEAD_DIM <= 1024 keeps K and V tiles at 8 KiB.
override KV_TILE: u32 = 16u;

struct Params { rows: u32, hq: u32, hkv: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read_write> lse: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> start: array<u32>;
@group(0) @binding(6) var<uniform> p: Params;

var<workgroup> qs: array<f32, ITEMS * HEAD_DIM>;
var<workgroup> ks: array<f32, KV_TILE * HEAD_DIM>;
var<workgroup> vs: array<f32, KV_TILE * HEAD_DIM>;
#include "kv_tile"
var<workgroup> scores: array<f32, ITEMS * KV_TILE>;

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
    // Keys every row of the block may see: from the first row's sequence start to the last row.
    let k_begin = start[i0];
    var first = 0u;
    if (live) { first = start[row]; }
    for (var e = t; e < ITEMS * HEAD_DIM; e += WG) {
        let it = e / HEAD_DIM;
        let r = i0 + it / GROUP;
        var x = 0.0;
        if (it < bq * GROUP && r < p.rows) { x = q[(r * p.hq + h0 + it % GROUP) * HEAD_DIM + e % HEAD_DIM]; }
        qs[e] = x;
    }
    var acc: array<f32, 32>; // HEAD_DIM / LANES <= 32 columns
    var m = -3.0e38;
    var l = 0.0;
    for (var kt = k_begin; kt <= last; kt += KV_TILE) {
        load_kv_tile(t, kt, last, kvh);
        workgroupBarrier();
        for (var jj = lane; jj < KV_TILE; jj += LANES) {
            let j = kt + jj;
            var s = -3.0e38;
            if (live && j >= first && j <= row) {
                var dot = 0.0;
                for (var x = 0u; x < HEAD_DIM; x++) { dot = fma(qs[item * HEAD_DIM + x], ks[jj * HEAD_DIM + x], dot); }
                s = dot * p.scale;
            }
            scores[item * KV_TILE + jj] = s;
        }
        workgroupBarrier();
        if (live) {
            var mx = m;
            for (var jj = 0u; jj < KV_TILE; jj++) { mx = max(mx, scores[item * KV_TILE + jj]); }
            // Tiles with no visible key for this row (mx still -3e38) leave it as it was.
            if (mx > -1.0e38) {
                let corr = exp(m - mx);
                l *= corr;
                for (var c = 0u; c < HEAD_DIM / LANES; c++) { acc[c] *= corr; }
                for (var jj = 0u; jj < KV_TILE; jj++) {
                    let s = scores[item * KV_TILE + jj];
                    if (s > -1.0e38) {
                        let w = exp(s - mx);
                        l += w;
                        for (var c = 0u; c < HEAD_DIM / LANES; c++) { acc[c] = fma(w, vs[jj * HEAD_DIM + lane + c * LANES], acc[c]); }
                    }
                }
                m = mx;
            }
        }
        workgroupBarrier();
    }
    if (live) {
        for (var c = 0u; c < HEAD_DIM / LANES; c++) { out[(row * p.hq + head) * HEAD_DIM + lane + c * LANES] = acc[c] / l; }
        if (lane == 0u) { lse[row * p.hq + head] = m + log(l); }
    }
}
