"""Writes tests/fixtures/gguf/: a small GGUF v3 file (F32, F16, Q8_0, Q4_0, Q4_1 tensors, some
metadata) quantized by the `gguf` Python package, and the package's own dequantization of each
tensor as f32 safetensors, so the Rust reader is checked against an independent implementation.

    python scripts/gguf_fixture.py tests/fixtures/gguf      # needs: pip install gguf safetensors
"""
import os
import sys

import numpy as np
import gguf
from gguf.quants import quantize, dequantize
from safetensors.numpy import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/gguf"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
writer = gguf.GGUFWriter(os.path.join(out, "small.gguf"), "llama")
writer.add_uint32("test.answer", 42)
writer.add_string("test.greeting", "héllo")
writer.add_array("test.list", [1, 2, 3])
expected = {}
for name, qtype, shape in [
    ("f32", gguf.GGMLQuantizationType.F32, (3, 5)),
    ("f16", gguf.GGMLQuantizationType.F16, (4, 6)),
    ("q8_0", gguf.GGMLQuantizationType.Q8_0, (4, 64)),
    ("q4_0", gguf.GGMLQuantizationType.Q4_0, (3, 96)),
    ("q4_1", gguf.GGMLQuantizationType.Q4_1, (5, 64)),
]:
    data = (rng.standard_normal(shape) * 0.7 + 0.1).astype(np.float32)
    raw = quantize(data, qtype)
    writer.add_tensor(name, raw, raw_dtype=qtype)
    expected[name] = np.ascontiguousarray(dequantize(raw, qtype).reshape(shape).astype(np.float32))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
save_file(expected, os.path.join(out, "expected.safetensors"))
print("wrote", out)
