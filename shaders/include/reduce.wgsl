// workgroup_sum / workgroup_max over a 1-D workgroup of WG invocations (WG a power of two that
// the including kernel declares): every invocation passes its value and gets the reduction of
// all of them. Call from uniform control flow. This is the workgroup-memory tree; adapters with
// subgroups get include/reduce_subgroup.wgsl instead, with the same functions.
var<workgroup> reduce_scratch: array<f32, WG>;

fn workgroup_reduce(t: u32, x: f32, take_max: bool) -> f32 {
    reduce_scratch[t] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            let other = reduce_scratch[t + s];
            reduce_scratch[t] = select(reduce_scratch[t] + other, max(reduce_scratch[t], other), take_max);
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

fn workgroup_sum(t: u32, x: f32) -> f32 { return workgroup_reduce(t, x, false); }
fn workgroup_max(t: u32, x: f32) -> f32 { return workgroup_reduce(t, x, true); }
