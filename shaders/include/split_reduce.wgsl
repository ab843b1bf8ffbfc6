// Decoding kernels give each output column SPLIT consecutive threads that stride along K (so
// a weight row is read coalesced: SPLIT neighbours read SPLIT neighbouring vec4), each holding
// partial sums for the ROWS rows of A. split_reduce leaves the column's totals in the acc of
// its first thread (lane 0). Workgroups of 64; SPLIT divides 64; call from uniform control flow.
var<workgroup> split_partial: array<f32, 64u * ROWS>;

fn split_reduce(t: u32, acc: ptr<function, array<f32, 32>>) {
    if (SPLIT == 1u) { return; }
    for (var r = 0u; r < ROWS; r++) { split_partial[t * ROWS + r] = (*acc)[r]; }
    workgroupBarrier();
    if (t % SPLIT == 0u) {
        for (var r = 0u; r < ROWS; r++) {
            var s = 0.0;
            for (var l = 0u; l < SPLIT; l++) { s += split_partial[(t + l) * ROWS + r]; }
            (*acc)[r] = s;
        }
    }
    workgroupBarrier();
}
