// Attention backward, part 2: dk, dv (overwrite). Key row j is seen by rows j .. end[j] - 1 of
// its sequence through every query head of its group:
// dk_j = scale Σ_{r,h} p_rj (dout_r·v_j - delta_r) q_r,  dv_j = Σ_{r,h} p_rj dout_r.
// Workgroup (b, g): ITEMS consecutive key rows of KV head g, their k and v in workgroup memory;
// for each query head of the group it walks the query rows that see the block in tiles of
// Q_TILE rows (q, dout, lse, delta in workgroup memory), probabilities recomputed. LANES threads
// per key: each scores its share of a tile's rows, then accumulates its share of the key's dk
// and dv columns (lane, lane + LANES, ...).
const WG: u32 = 64u;

override HEAD_DIM: u32 = 64u;
override Q_TILE: u32 = 16u;
override LANES: u32 = 4u;
override ITEMS: u32 = 64u / LANES;

struct Params { rows: u32, hq: u32, hkv: u32, scale: f32 }

@group(0) @binding(0) var<storage, read_write> dk: array<f32>;
@group(0) @binding(1) var<storage, read_write> dv: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read> end: array<u32>;
@group(0) @binding(9) var<uniform> p: Params;

var<workgroup> ks: array<f32, ITEMS * HEAD_DIM>;
var<workgroup> vs: array<f32, ITEMS * HEAD_DIM>;
var<workgroup> qt: array<f32, Q_TILE * HEAD_DIM>;
var<workgroup> dot_t: array<f32, Q_TILE * HEAD_DIM>;
var<workgroup> lse_t: array<f32, Q_TILE>;
var<workgroup> delta_t: array<f32, Q_TILE>;
var<workgroup> pt: array<f32, ITEMS * Q_TILE>;
var<workgroup> dst: array<f32, ITEMS * Q_TILE>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j0 = wg.x * ITEMS;
    let kvh = wg.y;
    let group = p.hq / p.hkv;
    let t = lid.x;
    let item = t / LANES;
    let lane = t % LANES;
    let j = j0 + item;
    let live = j < p.rows;
    let j_last = min(j0 + ITEMS, p.rows) - 1u;
    // Query rows that see some key of the block: from its first key to the end of its last
    // key's sequence.
    let i_end = end[j_last];
    for (var e = t; e < ITEMS * HEAD_DIM; e += WG) {
        let jj = j0 + e / HEAD_DIM;
        var kx = 0.0;
        var vx = 0.0;
        if (jj < p.rows) {
            let o = (jj * p.hkv + kvh) * HEAD_DIM + e % HEAD_DIM;
            kx = k[o];
            vx = v[o];
        }
        ks[e] = kx;
        vs[e] = vx;
    }
    var j_end = 0u;
    if (live) { j_end = end[j]; }
    var dk_acc: array<f32, 32>; // HEAD_DIM / LANES <= 32 columns
    var dv_acc: array<f32, 32>;
    for (var h = kvh * group; h < (kvh + 1u) * group; h++) {
        for (var i0 = j0; i0 < i_end; i0 += Q_TILE) {
            for (var e = t; e < Q_TILE * HEAD_DIM; e += WG) {
                let i = i0 + e / HEAD_DIM;
                var qx = 0.0;
                var dx = 0.0;
                if (i < i_end) {
                    let o = (i * p.hq + h) * HEAD_DIM + e % HEAD_DIM;
                    qx = q[o];
                    dx = dout[o];
                }
                qt[e] = qx;
                dot_t[e] = dx;
            }
            if (t < Q_TILE) {
                let i = i0 + t;
                var l = 0.0;
                var dl = 0.0;
                if (i < i_end) {
                    l = lse[i * p.hq + h];
                    dl = delta[i * p.hq + h];
                }
                lse_t[t] = l;
                delta_t[t] = dl;
            }
            workgroupBarrier();
            for (var ii = lane; ii < Q_TILE; ii += LANES) {
                let i = i0 + ii;
                var pij = 0.0;
                var g = 0.0;
                if (live && i >= j && i < j_end) {
                    var s = 0.0;
                    var dp = 0.0;
                    for (var x = 0u; x < HEAD_DIM; x++) {
                        s = fma(qt[ii * HEAD_DIM + x], ks[item * HEAD_DIM + x], s);
                        dp = fma(dot_t[ii * HEAD_DIM + x], vs[item * HEAD_DIM + x], dp);
                    }
                    pij = exp(p.scale * s - lse_t[ii]);
                    g = p.scale * pij * (dp - delta_t[ii]);
                }
                pt[item * Q_TILE + ii] = pij;
                dst[item * Q_TILE + ii] = g;
            }
            workgroupBarrier();
            if (live) {
                for (var ii = 0u; ii < Q_TILE; ii++) {
                    let pij = pt[item * Q_TILE + ii];
                    let g = dst[item * Q_TILE + ii];
                    for (var c = 0u; c < HEAD_DIM / LANES; c++) {
                        let x = ii * HEAD_DIM + lane + c * LANES;
                        dv_acc[c] = fma(pij, dot_t[x], dv_acc[c]);
                        dk_acc[c] = fma(g, qt[x], dk_acc[c]);
                    }
                }
            }
            workgroupBarrier();
        }
    }
    if (live) {
        for (var c = 0u; c < HEAD_DIM / LANES; c++) {
            let o = (j * p.hkv + kvh) * HEAD_DIM + lane + c * LANES;
            dk[o] = dk_acc[c];
            dv[o] = dv_acc[c];
        }
    }
}
