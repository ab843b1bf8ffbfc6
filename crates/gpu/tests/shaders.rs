//! Every shader in `shaders/` parses and validates with naga, with no GPU; and every file is a
//! registered kernel.

use std::collections::BTreeSet;
use std::path::PathBuf;

use rstar2_gpu::kernels::Variant;

#[test]
fn every_shader_parses_and_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shaders");
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            files.insert(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    let registered: BTreeSet<String> = rstar2_gpu::kernels::ALL.iter().map(|k| k.name.to_string()).collect();
    assert_eq!(files, registered, "shaders/ and kernels::ALL disagree");
    for k in rstar2_gpu::kernels::ALL {
        // Every variant an adapter may build: f16 weights where the kernel has them, subgroup
        // reductions where it includes one.
        let mut module = None;
        for f16_weights in [false, true] {
            for subgroups in [false, true] {
                if (f16_weights && !k.has_f16_weights()) || (subgroups && !k.uses_subgroups()) {
                    continue;
                }
                let source = k.wgsl(Variant { f16_weights, subgroups });
                let what = format!("{}.wgsl (f16 weights {f16_weights}, subgroups {subgroups})", k.name);
                let parsed = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
                let caps = naga::valid::Capabilities::SHADER_FLOAT16 | naga::valid::Capabilities::SUBGROUP | naga::valid::Capabilities::COOPERATIVE_MATRIX;
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                    .validate(&parsed)
                    .unwrap_or_else(|e| panic!("{what} does not validate: {e:?}"));
                module.get_or_insert(parsed);
            }
        }
        let module = module.expect("the plain variant");
        assert!(module.entry_points.iter().any(|e| e.name == "main" && e.stage == naga::ShaderStage::Compute), "{}.wgsl: no compute entry point `main`", k.name);
    }
}
