"""Checks an imported GGUF model against transformers' own GGUF loader (which dequantizes with
the `gguf` package): tokenizer ids on a corpus, logits on a chat prompt, greedy generations.

    cargo xtask import-gguf --gguf FILE.gguf --out DIR
    python scripts/gguf_compare.py FILE.gguf DIR        # needs torch, transformers, gguf

Prints one JSON object; the Rust side's numbers come from `cargo xtask forward` and
`cargo xtask generate` run by this script.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf_path, folder = sys.argv[1], sys.argv[2]
xtask = os.environ.get("XTASK", "target/release/xtask")
gdir, gname = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
hf_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
from tokenizers import Tokenizer
ours = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
corpus = [
    "def f(x):\n    return x ** 2 + 3*x - 7  # comment\n",
    "12 times 7 is 84; 3.14159 and 1,234,567 and 10**20",
    "Unicode: café, naïve, 東京, Ελληνικά, emoji 🙂 and tabs\tend",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and   multiple   gaps\n\n\nnewlines",
]
mismatch = 0
for text in corpus:
    a = hf_tok.encode(text, add_special_tokens=False)
    b = ours.encode(text, add_special_tokens=False).ids
    if a != b:
        mismatch += 1
        print("tokenizer mismatch:", repr(text), a[:20], b[:20], file=sys.stderr)
    if ours.decode(b, skip_special_tokens=False) != text:
        mismatch += 1
        print("decode does not round-trip:", repr(text), file=sys.stderr)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, torch_dtype=torch.float32)
model.eval()
# Every imported tensor against transformers' dequantization of the same file.
imported = load_file(os.path.join(folder, "model.safetensors"))
reference = {k: v.float().numpy() for k, v in model.state_dict().items()}
tensor_diffs = {k: float(np.abs(imported[k] - reference[k]).max()) for k in imported}
worst_tensor = max(tensor_diffs, key=tensor_diffs.get)
prompt = "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"
ids = hf_tok.encode(prompt, add_special_tokens=False)
with torch.no_grad():
    ref = model(torch.tensor([ids])).logits[0].numpy()
with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "logits.safetensors")
    subprocess.run([xtask, "forward", "--model", folder, "--tokens", ",".join(map(str, ids)), "--out", out], check=True)
    got = load_file(out)["logits"]
diff = float(np.abs(got - ref).max())
with torch.no_grad():
    gen = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0][len(ids):].tolist()
# Greedy decoding agrees iff our arg-max at every generated position is HF's next token.
full = ids + gen
with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "logits.safetensors")
    subprocess.run([xtask, "forward", "--model", folder, "--tokens", ",".join(map(str, full)), "--out", out], check=True)
    ours_greedy = load_file(out)["logits"].argmax(-1)[len(ids) - 1:len(full) - 1].tolist()
print(json.dumps({
    "tensors": len(tensor_diffs), "tensors_bit_equal": sum(int(d == 0.0) for d in tensor_diffs.values()),
    "worst_tensor": worst_tensor, "worst_tensor_max_abs_diff": tensor_diffs[worst_tensor],
    "tokenizer_texts": len(corpus), "tokenizer_mismatches": mismatch,
    "prompt_tokens": len(ids), "max_abs_logit_diff": diff, "logit_scale": float(np.abs(ref).max()),
    "argmax_equal": bool((got.argmax(-1) == ref.argmax(-1)).all()),
    "hf_greedy": hf_tok.decode(gen, skip_special_tokens=False),
    "greedy_tokens_equal": sum(int(a == b) for a, b in zip(ours_greedy, gen)), "greedy_tokens": len(gen),
}))
