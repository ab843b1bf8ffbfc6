// C[M, N] (+)= A[M, K] · B[K, N], with A and B read through strides so that one kernel serves
// the forward x·Wᵀ, the input gradient dout·W and the weight gradient doutᵀ·x.
// A[i, p] = a[a_off + i * a_rs + p * a_cs]; B[p, j] = b[b_off + p * b_rs + j * b_cs];
// C[i, j] = c[c_off + i * ldc + j].
//
// Register tiling: a workgroup of 16x16 threads owns a BM x BN tile (BM = 64 TM4, BN = 64 TN4)
// and each thread a (4 TM4) x (4 TN4) block of it: rows 4 (ty + 16 i) .. +3 and columns
// 4 (tx + 16 j) .. +3, so every workgroup-memory read is a vec4 (A's broadcast across a row
// of threads, B's 16 consecutive vec4 per row of threads: conflict-free). Tiles of K are BK
// deep, stored M- and N-contiguous with one vec4 of padding per K row so the transposing
// stores of K-contiguous operands meet at most 2-way bank conflicts. The next K tile is loaded
// into registers while the current one is multiplied (register double buffering).
// Split-K (SPLIT_K = 1): workgroup z takes K range [z k_chunk, (z + 1) k_chunk) and writes its
// partial product to c[z * m * n + i * n + j] (a scratch buffer), summed by matmul_reduce.
// The f16-weights variant (see kernels.rs) stores B in f16; tiles and sums are f32.
alias WT = f32;

#include "matmul_params"

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<WT>;
@group(0) @binding(3) var<uniform> p: Params;

// vec4 groups of rows (TM4) and of columns (TN4) per thread: 1 or 2 each.
override TM4: u32 = 1u;
override TN4: u32 = 1u;
override SPLIT_K: u32 = 0u;
const BK: u32 = 16u;
const MAX4: u32 = 2u;

// [BK][BM / 4 + 1] and [BK][BN / 4 + 1] vec4, sized for the largest tile.
var<workgroup> ta: array<vec4<f32>, BK * (16u * TM4 + 1u)>;
var<workgroup> tb: array<vec4<f32>, BK * (16u * TN4 + 1u)>;

// Where element idx of a thread block's share of the A tile goes: (row in the tile, k in the
// tile), walking memory contiguously: along K when A's rows are contiguous (reads of 16
// consecutive floats), else along M. b_slot likewise for B's (column, k).
fn a_slot(idx: u32) -> vec2<u32> {
    if (p.a_cs == 1u) { return vec2<u32>(idx / BK, idx % BK); }
    return vec2<u32>(idx % (64u * TM4), idx / (64u * TM4));
}

fn b_slot(idx: u32) -> vec2<u32> {
    if (p.b_rs == 1u) { return vec2<u32>(idx / BK, idx % BK); }
    return vec2<u32>(idx % (64u * TN4), idx / (64u * TN4));
}

// This thread's share of the A and B tiles at K offset k0 into registers, zeros outside.
fn load_tiles(tid: u32, row0: u32, col0: u32, k0: u32, k_end: u32, ra: ptr<function, array<f32, 8>>, rb: ptr<function, array<f32, 8>>) {
    for (var e = 0u; e < 4u * TM4; e++) {
        let at = a_slot(tid + e * 256u);
        var v = 0.0;
        if (row0 + at.x < p.m && k0 + at.y < k_end) { v = a[p.a_off + (row0 + at.x) * p.a_rs + (k0 + at.y) * p.a_cs]; }
        (*ra)[e] = v;
    }
    for (var e = 0u; e < 4u * TN4; e++) {
        let at = b_slot(tid + e * 256u);
        var v = 0.0;
        if (col0 + at.x < p.n && k0 + at.y < k_end) { v = f32(b[p.b_off + (k0 + at.y) * p.b_rs + (col0 + at.x) * p.b_cs]); }
        (*rb)[e] = v;
    }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bm = 64u * TM4;
    let bn = 64u * TN4;
    let a_stride = 16u * TM4 + 1u;
    let b_stride = 16u * TN4 + 1u;
    let row0 = wg.y * bm;
    let col0 = wg.x * bn;
    let tid = lid.y * 16u + lid.x;
    var k_begin = 0u;
    var k_end = p.k;
    if (SPLIT_K != 0u) {
        k_begin = wg.z * p.k_chunk;
        k_end = min(p.k, k_begin + p.k_chunk);
    }
    var ra: array<f32, 8>; // BM * BK / 256 = 4 TM4 elements of A per thread
    var rb: array<f32, 8>;
    var acc: array<vec4<f32>, 16>; // [4 TM4 rows][TN4 vec4 of columns]

    var k0 = k_begin;
    load_tiles(tid, row0, col0, k0, k_end, &ra, &rb);
    for (; k0 < k_end; k0 += BK) {
        // Registers -> workgroup memory.
        for (var e = 0u; e < 4u * TM4; e++) {
            let at = a_slot(tid + e * 256u);
            ta[at.y * a_stride + at.x / 4u][at.x % 4u] = ra[e];
        }
        for (var e = 0u; e < 4u * TN4; e++) {
            let at = b_slot(tid + e * 256u);
            tb[at.y * b_stride + at.x / 4u][at.x % 4u] = rb[e];
        }
        workgroupBarrier();
        // Start the next tile's global loads; they land while this tile is multiplied.
        if (k0 + BK < k_end) { load_tiles(tid, row0, col0, k0 + BK, k_end, &ra, &rb); }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f32>, MAX4>;
            var bv: array<vec4<f32>, MAX4>;
            for (var i = 0u; i < TM4; i++) { av[i] = ta[kk * a_stride + lid.y + 16u * i]; }
            for (var j = 0u; j < TN4; j++) { bv[j] = tb[kk * b_stride + lid.x + 16u * j]; }
            for (var i = 0u; i < TM4; i++) {
                for (var r = 0u; r < 4u; r++) {
                    let ar = vec4<f32>(av[i][r]);
                    for (var j = 0u; j < TN4; j++) {
                        let o = (i * 4u + r) * TN4 + j;
                        acc[o] = fma(ar, bv[j], acc[o]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM4; i++) {
        for (var r = 0u; r < 4u; r++) {
            let row = row0 + 4u * (lid.y + 16u * i) + r;
            if (row >= p.m) { continue; }
            for (var j = 0u; j < TN4; j++) {
                let v4 = acc[(i * 4u + r) * TN4 + j];
                for (var q = 0u; q < 4u; q++) {
                    let col = col0 + 4u * (lid.x + 16u * j) + q;
                    if (col < p.n) {
                        if (SPLIT_K != 0u) {
                            c[wg.z * p.m * p.n + row * p.n + col] = v4[q];
                        } else {
                            let o = p.c_off + row * p.ldc + col;
                            var v = v4[q];
                            if (p.accumulate != 0u) { v += c[o]; }
                            c[o] = v;
                        }
                    }
                }
            }
        }
    }
}
