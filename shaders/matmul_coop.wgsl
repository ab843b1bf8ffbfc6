enable wgpu_cooperative_matrix;
// C[M, N] (+)= A[M, K] · B[K, N] on cooperative matrices (tensor cores, simdgroup matrices),
// operands through the strides of matmul.wgsl, each contiguous along one of its dimensions.
// wgpu 30 offers 8x8 f32 matrices only (f32 in, f32 accumulate), so this is not an f16 path.
// One subgroup per workgroup (SG invocations, the adapter's subgroup size) computes a 16x16
// block of C as 2x2 accumulators, walking K 8 at a time; M and N multiples of 16, K of 8.
// Used only where the adapter exposes the feature, after a check against matmul.wgsl on the
// device, and where the autotune finds it faster.
override SG: u32 = 32u;
// A[i, p] at a[a_off + i a_rs + p] (row-major), else at a[a_off + i + p a_cs] (column-major).
override A_K_MAJOR: bool = true;
// B[p, j] at b[b_off + p + j b_cs] (column-major: x·Wᵀ), else at b[b_off + p b_rs + j].
override B_K_MAJOR: bool = true;

#include "matmul_params"

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn load_a(i: u32, k0: u32) -> coop_mat8x8<f32, A> {
    if (A_K_MAJOR) { return coopLoadT<coop_mat8x8<f32, A>>(&a[p.a_off + i * p.a_rs + k0], p.a_rs); }
    return coopLoad<coop_mat8x8<f32, A>>(&a[p.a_off + i + k0 * p.a_cs], p.a_cs);
}

fn load_b(k0: u32, j: u32) -> coop_mat8x8<f32, B> {
    if (B_K_MAJOR) { return coopLoad<coop_mat8x8<f32, B>>(&b[p.b_off + k0 + j * p.b_cs], p.b_cs); }
    return coopLoadT<coop_mat8x8<f32, B>>(&b[p.b_off + k0 * p.b_rs + j], p.b_rs);
}

fn load_c(i: u32, j: u32) -> coop_mat8x8<f32, C> {
    if (p.accumulate != 0u) { return coopLoadT<coop_mat8x8<f32, C>>(&c[p.c_off + i * p.ldc + j], p.ldc); }
    return coop_mat8x8<f32, C>();
}

@compute @workgroup_size(SG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>) {
    let i0 = wg.y * 16u;
    let j0 = wg.x * 16u;
    var c00 = load_c(i0, j0);
    var c01 = load_c(i0, j0 + 8u);
    var c10 = load_c(i0 + 8u, j0);
    var c11 = load_c(i0 + 8u, j0 + 8u);
    for (var k0 = 0u; k0 < p.k; k0 += 8u) {
        let a0 = load_a(i0, k0);
        let a1 = load_a(i0 + 8u, k0);
        let b0 = load_b(k0, j0);
        let b1 = load_b(k0, j0 + 8u);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
    coopStoreT(c00, &c[p.c_off + i0 * p.ldc + j0], p.ldc);
    coopStoreT(c01, &c[p.c_off + i0 * p.ldc + j0 + 8u], p.ldc);
    coopStoreT(c10, &c[p.c_off + (i0 + 8u) * p.ldc + j0], p.ldc);
    coopStoreT(c11, &c[p.c_off + (i0 + 8u) * p.ldc + j0 + 8u], p.ldc);
}
