// Attention of new rows against a paged KV cache (decoding, prefill, tool responses), split
// over the context (flash decoding).
// q, out [rows, HQ * D]; cache_k, cache_v [slots, HKV * D] hold the keys and values of every
// sequence in blocks of BLOCK slots; row r sees its sequence's first len[r] positions, whose
// blocks are table[table_off[r] ..].
// Workgroup (c, y, r): row r, the GROUP query heads y GROUP .. that share one KV head, and keys
// [c chunk_len, (c + 1) chunk_len) of the context, 64 at a time: each thread scores one key
// against all GROUP heads (the key read once for the group), GROUP threads update the running
// max and sum (online softmax), then each thread accumulates the weighted values of its own
// head dimensions (value rows read coalesced). With one chunk the result goes to out; with
// several, each chunk's normalized output and log-sum-exp go to part for
// attention_decode_combine: part[((r HQ + h) chunks + c) D + t], and after the rows * HQ *
// chunks * D outputs, part[lse_at + (r HQ + h) chunks + c].
const BLOCK: u32 = 16u;
const WG: u32 = 64u;
// Head dimensions per thread at most (head_dim <= 256).
const MAX_DPT: u32 = 4u;

override HEAD_DIM: u32 = 64u;
override GROUP: u32 = 1u;

struct Params { rows: u32, hq: u32, hkv: u32, scale: f32, chunk_len: u32, chunks: u32, lse_at: u32 }

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read_write> part: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> cache_k: array<f32>;
@group(0) @binding(4) var<storage, read> cache_v: array<f32>;
@group(0) @binding(5) var<storage, read> table: array<u32>;
@group(0) @binding(6) var<storage, read> table_off: array<u32>;
@group(0) @binding(7) var<storage, read> len: array<u32>;
@group(0) @binding(8) var<uniform> p: Params;

var<workgroup> qs: array<f32, GROUP * HEAD_DIM>;
var<workgroup> scores: array<f32, GROUP * WG>; // [GROUP][WG]: scores, then weights
var<workgroup> slot_of: array<u32, WG>;
var<workgroup> run_m: array<f32, GROUP>;
var<workgroup> run_l: array<f32, GROUP>;
var<workgroup> corr: array<f32, GROUP>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wg.x;
    let h0 = wg.y * GROUP;
    let r = wg.z;
    let t = lid.x;
    let kvh = h0 / (p.hq / p.hkv);
    let length = len[r];
    let k_begin = min(length, c * p.chunk_len);
    let k_end = min(length, k_begin + p.chunk_len);
    for (var e = t; e < GROUP * HEAD_DIM; e += WG) { qs[e] = q[(r * p.hq + h0) * HEAD_DIM + e]; }
    if (t < GROUP) { run_m[t] = -3.0e38; run_l[t] = 0.0; }
    var acc: array<f32, 32>; // [GROUP <= 8][MAX_DPT]
    workgroupBarrier();
    for (var base = k_begin; base < k_end; base += WG) {
        let j = base + t;
        if (j < k_end) {
            let slot = table[table_off[r] + j / BLOCK] * BLOCK + j % BLOCK;
            slot_of[t] = slot;
            let ko = (slot * p.hkv + kvh) * HEAD_DIM;
            for (var h = 0u; h < GROUP; h++) {
                var s = 0.0;
                for (var x = 0u; x < HEAD_DIM; x++) { s = fma(qs[h * HEAD_DIM + x], cache_k[ko + x], s); }
                scores[h * WG + t] = s * p.scale;
            }
        } else {
            for (var h = 0u; h < GROUP; h++) { scores[h * WG + t] = -3.0e38; }
        }
        workgroupBarrier();
        if (t < GROUP) {
            let old = run_m[t];
            var mx = old;
            for (var i = 0u; i < WG; i++) { mx = max(mx, scores[t * WG + i]); }
            var sum = 0.0;
            for (var i = 0u; i < WG; i++) {
                let e = exp(scores[t * WG + i] - mx);
                scores[t * WG + i] = e;
                sum += e;
            }
            let cf = exp(old - mx);
            run_l[t] = run_l[t] * cf + sum;
            run_m[t] = mx;
            corr[t] = cf;
        }
        workgroupBarrier();
        let here = min(WG, k_end - base);
        for (var dd = 0u; dd < MAX_DPT; dd++) {
            let x = t + dd * WG;
            if (x < HEAD_DIM) {
                for (var h = 0u; h < GROUP; h++) { acc[h * MAX_DPT + dd] *= corr[h]; }
                for (var i = 0u; i < here; i++) {
                    let vv = cache_v[(slot_of[i] * p.hkv + kvh) * HEAD_DIM + x];
                    for (var h = 0u; h < GROUP; h++) { acc[h * MAX_DPT + dd] = fma(scores[h * WG + i], vv, acc[h * MAX_DPT + dd]); }
                }
            }
        }
        workgroupBarrier();
    }
    for (var h = 0u; h < GROUP; h++) {
        let l = run_l[h];
        let inv = select(0.0, 1.0 / l, l > 0.0);
        let row_head = r * p.hq + h0 + h;
        for (var dd = 0u; dd < MAX_DPT; dd++) {
            let x = t + dd * WG;
            if (x < HEAD_DIM) {
                let o = acc[h * MAX_DPT + dd] * inv;
                if (p.chunks == 1u) {
                    out[row_head * HEAD_DIM + x] = o;
                } else {
                    part[(row_head * p.chunks + c) * HEAD_DIM + x] = o;
                }
            }
        }
        if (t == 0u && p.chunks > 1u) {
            // An empty chunk (a row shorter than the longest) weighs nothing.
            part[p.lse_at + row_head * p.chunks + c] = select(-3.0e38, run_m[h] + log(l), l > 0.0);
        }
    }
}
