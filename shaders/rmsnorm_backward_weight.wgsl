// dw[j] += sum_r dout[r, j] * x[r, j] * rstd[r]; parameter gradient, accumulates.
// The rows may be heads of several tokens (Qwen3 q/k norm): rows = tokens * heads.
// A workgroup owns 32 columns: its 8 lanes of 32 threads walk the rows 8 apart, reading 32
// consecutive floats per row, then the lanes' sums meet in workgroup memory.
struct Params { rows: u32, d: u32 }

@group(0) @binding(0) var<storage, read_write> dw: array<f32>;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

#include "column_sum"

@compute @workgroup_size(32, 8, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = (wg.x + wg.y * nwg.x) * COLS + lid.x;
    var acc = 0.0;
    if (j < p.d) {
        for (var r = lid.y; r < p.rows; r += LANES) { acc = fma(dout[r * p.d + j] * x[r * p.d + j], rstd[r], acc); }
    }
    let total = column_total(lid, acc);
    if (lid.y == 0u && j < p.d) { dw[j] += total; }
}
