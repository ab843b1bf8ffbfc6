// The scalars of the matmul kernels (matmul.wgsl, matmul_coop.wgsl): sizes, whether C
// accumulates, operand strides and offsets, and split-K's range per workgroup.
struct Params {
    m: u32, n: u32, k: u32, accumulate: u32,
    a_rs: u32, a_cs: u32, b_rs: u32, b_cs: u32,
    a_off: u32, b_off: u32, c_off: u32, ldc: u32,
    k_chunk: u32,
}
