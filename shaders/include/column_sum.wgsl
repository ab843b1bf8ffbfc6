// Column sums over rows for the parameter-gradient reductions: a workgroup of COLS x LANES
// invocations owns COLS columns; each of its LANES lanes has summed every LANES-th row of its
// column into `acc`. column_total returns the column's total to lane 0 (others get 0).
// Call from uniform control flow.
const COLS: u32 = 32u;
const LANES: u32 = 8u;
var<workgroup> lane_sums: array<f32, 256>; // [LANES][COLS]

fn column_total(lid: vec3<u32>, acc: f32) -> f32 {
    lane_sums[lid.y * COLS + lid.x] = acc;
    workgroupBarrier();
    var total = 0.0;
    if (lid.y == 0u) {
        for (var l = 0u; l < LANES; l++) { total += lane_sums[l * COLS + lid.x]; }
    }
    return total;
}
