// C[M, N] = A[M, K] · Wᵀ for few rows (decoding): W is [N, K] row-major, A is [M, K].
// One workgroup of 64 threads per output column j, each thread a strided slice of K for all
// rows at once, then a tree reduction; W is read once per column, which is what bounds decoding.
// The f16-weights variant (see kernels.rs) stores W in f16 and multiplies in f16; sums stay f32.
alias WT = f32;
fn product(a: f32, w: WT) -> f32 { return a * w; }

// Windows of a large W: columns j of this dispatch are W rows from w_off, written to
// c[c_off + row * ldc + j].
struct Params { m: u32, n: u32, k: u32, ldc: u32, w_off: u32, c_off: u32 }

const ROWS: u32 = 8u;

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> partial: array<f32, 512>; // [ROWS][64]

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wg.x + wg.y * nwg.x;
    let t = lid.x;
    var acc: array<f32, 8>;
    if (j < p.n) {
        for (var q = t; q < p.k; q += 64u) {
            let wv = w[p.w_off + j * p.k + q];
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) { acc[r] += product(a[r * p.k + q], wv); }
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) { partial[r * 64u + t] = acc[r]; }
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (t < s) {
            for (var r = 0u; r < ROWS; r++) { partial[r * 64u + t] += partial[r * 64u + t + s]; }
        }
        workgroupBarrier();
    }
    if (t < p.m && t < ROWS && j < p.n) {
        c[p.c_off + t * p.ldc + j] = partial[t * 64u];
    }
}
