//! Every shader in `shaders/` parses and validates with naga, with no GPU; and every file is a
//! registered kernel.

use std::collections::BTreeSet;
use std::path::PathBuf;

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
        let module = naga::front::wgsl::parse_str(k.source).unwrap_or_else(|e| panic!("{}.wgsl: {}", k.name, e.emit_to_string(k.source)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}.wgsl does not validate: {e:?}", k.name));
        // The f16-weights variant (run only where the adapter has SHADER_F16).
        if k.has_f16_weights() {
            let source = k.f16_weights_source();
            let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{} (f16 weights): {}", k.name, e.emit_to_string(&source)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::SHADER_FLOAT16)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} (f16 weights) does not validate: {e:?}", k.name));
        }
        assert!(module.entry_points.iter().any(|e| e.name == "main" && e.stage == naga::ShaderStage::Compute), "{}.wgsl: no compute entry point `main`", k.name);
    }
}
