// C[M, N] (+)= A[M, K] · B[K, N], with A and B read through strides so that one kernel serves
// the forward x·Wᵀ, the input gradient dout·W and the weight gradient doutᵀ·x.
// A[i, p] = a[a_off + i * a_rs + p * a_cs]; B[p, j] = b[b_off + p * b_rs + j * b_cs];
// C[i, j] = c[c_off + i * ldc + j].
// 64x64 output tile per workgroup of 16x16 threads, 4x4 accumulators per thread, K in steps of 16.
// The f16-weights variant (see kernels.rs) stores B in f16; tiles and sums are f32.
alias WT = f32;

struct Params {
    m: u32, n: u32, k: u32, accumulate: u32,
    a_rs: u32, a_cs: u32, b_rs: u32, b_cs: u32,
    a_off: u32, b_off: u32, c_off: u32, ldc: u32,
}

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<WT>;
@group(0) @binding(3) var<uniform> p: Params;

const TILE: u32 = 64u;
const KT: u32 = 16u;

var<workgroup> ta: array<f32, 1024>; // [KT][TILE]
var<workgroup> tb: array<f32, 1024>; // [KT][TILE]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += KT) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            // Walk memory contiguously: along K when A's rows are contiguous, else along M.
            var r: u32; var kk: u32;
            if (p.a_cs == 1u) { r = idx / KT; kk = idx % KT; } else { r = idx % TILE; kk = idx / TILE; }
            var av = 0.0;
            if (row0 + r < p.m && k0 + kk < p.k) {
                av = a[p.a_off + (row0 + r) * p.a_rs + (k0 + kk) * p.a_cs];
            }
            ta[kk * TILE + r] = av;
            var cb: u32; var kb: u32;
            if (p.b_cs == 1u) { cb = idx % TILE; kb = idx / TILE; } else { cb = idx / KT; kb = idx % KT; }
            var bv = 0.0;
            if (col0 + cb < p.n && k0 + kb < p.k) {
                bv = f32(b[p.b_off + (k0 + kb) * p.b_rs + (col0 + cb) * p.b_cs]);
            }
            tb[kb * TILE + cb] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                ar[i] = ta[kk * TILE + lid.y + 16u * i];
                br[i] = tb[kk * TILE + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(ar[i], br[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                let o = p.c_off + row * p.ldc + col;
                var v = acc[i * 4u + j];
                if (p.accumulate != 0u) { v += c[o]; }
                c[o] = v;
            }
        }
    }
}
