// workgroup_sum / workgroup_max with subgroup operations (see include/reduce.wgsl for the
// contract): each subgroup reduces in registers, its first invocation leaves the result in
// workgroup memory, one barrier, and every invocation combines the WG / lanes partials.
// Chosen only where the adapter's subgroups hold at most 64 invocations, so a subgroup is
// never larger than the workgroup; subgroups are taken to be consecutive invocations.
var<workgroup> reduce_scratch: array<f32, WG>;

fn workgroup_reduce(t: u32, x: f32, take_max: bool) -> f32 {
    let lanes = subgroupAdd(1u);
    let part = select(subgroupAdd(x), subgroupMax(x), take_max);
    if (subgroupExclusiveAdd(1u) == 0u) { reduce_scratch[t / lanes] = part; }
    workgroupBarrier();
    var total = reduce_scratch[0];
    for (var g = 1u; g < WG / lanes; g++) {
        let other = reduce_scratch[g];
        total = select(total + other, max(total, other), take_max);
    }
    workgroupBarrier();
    return total;
}

fn workgroup_sum(t: u32, x: f32) -> f32 { return workgroup_reduce(t, x, false); }
fn workgroup_max(t: u32, x: f32) -> f32 { return workgroup_reduce(t, x, true); }
