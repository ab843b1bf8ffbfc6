"""PyTorch CPU doing the same work as `cargo xtask bench model`, for the ratios in its table.
Prints one JSON object. Usage: bench_torch.py CONFIG_JSON TRAIN_BATCH TRAIN_LEN DECODE_BATCH PROMPT_LEN DECODE_STEPS THREADS [PRETRAINED]
With PRETRAINED = 1 the weights are loaded from CONFIG_JSON's folder (model.safetensors)."""
import json, sys, time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

def main():
    cfg_path, tb, tl, db, pl, steps, threads = sys.argv[1], *map(int, sys.argv[2:8])
    pretrained = len(sys.argv) > 8 and sys.argv[8] == "1"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(cfg_path)
    cfg._attn_implementation = "sdpa"
    if pretrained:
        import os
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(cfg_path)), config=cfg, torch_dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(cfg).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (tb, tl))
    def train_step():
        opt.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
    train_step()
    t = time.perf_counter(); n = 2
    for _ in range(n):
        train_step()
    train_tps = n * tb * tl / (time.perf_counter() - t)
    prompt = torch.randint(0, cfg.vocab_size, (db, pl))
    with torch.no_grad():
        def decode():
            out = model(input_ids=prompt, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            return db * steps / (time.perf_counter() - t)
        decode()
        decode_tps = decode()
    print(json.dumps({"train_tokens_per_s": train_tps, "decode_tokens_per_s": decode_tps}))

if __name__ == "__main__":
    main()
