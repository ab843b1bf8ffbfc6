//! The GGUF reader against the `gguf` Python package: tests/fixtures/gguf/small.gguf was
//! quantized by that package and expected.safetensors holds its own dequantization
//! (scripts/gguf_fixture.py).

use std::path::PathBuf;

use rstar2::model::gguf::{GgufFile, Value};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

#[test]
fn dequantization_equals_the_reference_package_exactly() {
    let file = GgufFile::open(&fixture().join("small.gguf")).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get("test.answer"), Some(&Value::U64(42)));
    assert_eq!(file.get("test.greeting"), Some(&Value::Str("héllo".into())));
    assert_eq!(file.get("test.list"), Some(&Value::Array(vec![Value::I64(1), Value::I64(2), Value::I64(3)])));
    let bytes = std::fs::read(fixture().join("expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensors.len(), 5);
    for t in &file.tensors {
        let want = expected.tensor(&t.name).unwrap();
        assert_eq!(t.torch_shape(), want.shape(), "{}", t.name);
        let want: Vec<f32> = want.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let got = file.dequantize(t).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{} element {i}: {g} vs {w}", t.name);
        }
    }
}

#[test]
fn truncated_file_is_refused_with_the_tensor_named() {
    let bytes = std::fs::read(fixture().join("small.gguf")).unwrap();
    // The last tensor (q4_1, 200 bytes) is followed by alignment padding; cut into its data.
    let cut = bytes[..bytes.len() - 64].to_vec();
    let err = GgufFile::parse(cut, "cut.gguf").err().unwrap().to_string();
    assert!(err.contains("truncated") && err.contains("q4_1"), "{err}");
}
