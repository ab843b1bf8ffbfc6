"""PyTorch CPU doing the same work as `cargo xtask bench model`, for the ratios in its tables.
Prints one JSON object.

Usage:
  bench_torch.py matmul THREADS M,K,N [M,K,N ...]      -> {"gflops": [...]} for x[m,k] @ w[n,k]^T
  bench_torch.py train CONFIG_JSON BATCH LEN THREADS PRETRAINED
                                                        -> {"tokens_per_s": ...} fwd+bwd+AdamW
  bench_torch.py decode CONFIG_JSON B1,B2,... PROMPT_LEN STEPS THREADS PRETRAINED
                                                        -> {"tokens_per_s": [...]} greedy, KV cache
With PRETRAINED = 1 the weights are loaded from CONFIG_JSON's folder (model.safetensors).
BENCH_TORCH_DEVICE=cuda runs the same work on the GPU (PyTorch eager, fp32), for the GPU
benchmark's comparison (scripts/device_bench.sh); THREADS then only sets the CPU threads."""
import json, os, sys, time

import torch

DEVICE = os.environ.get("BENCH_TORCH_DEVICE", "cpu")


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def matmul(threads, shapes):
    torch.set_num_threads(threads)
    out = []
    for shape in shapes:
        m, k, n = map(int, shape.split(","))
        x, w = torch.full((m, k), 0.5, device=DEVICE), torch.full((n, k), 0.25, device=DEVICE)
        reps = 5 if m * n * k > 1 << 28 and DEVICE == "cpu" else 30
        for _ in range(2):
            x @ w.T
        sync()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            x @ w.T
            sync()
            times.append(time.perf_counter() - t)
        out.append(2 * m * n * k / median(times) / 1e9)
    return {"gflops": out}


def load(cfg_path, pretrained):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(cfg_path)
    cfg._attn_implementation = "sdpa"
    if pretrained:
        return cfg, AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(cfg_path)), config=cfg, torch_dtype=torch.float32).to(DEVICE)
    return cfg, AutoModelForCausalLM.from_config(cfg).float().to(DEVICE)


def train(cfg_path, tb, tl, threads, pretrained):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, model = load(cfg_path, pretrained)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (tb, tl), device=DEVICE)

    def step():
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sync()

    step()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"tokens_per_s": tb * tl / median(times)}


def decode(cfg_path, batches, pl, steps, threads, pretrained):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, model = load(cfg_path, pretrained)
    out = []
    with torch.no_grad():
        for db in batches:
            prompt = torch.randint(0, cfg.vocab_size, (db, pl), device=DEVICE)

            def run():
                o = model(input_ids=prompt, use_cache=True)
                past, tok = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
                sync()
                t = time.perf_counter()
                for _ in range(steps):
                    o = model(input_ids=tok, past_key_values=past, use_cache=True)
                    past, tok = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
                sync()
                return db * steps / (time.perf_counter() - t)

            run()
            # Best of three after a warm-up, as the Rust side measures its own.
            out.append(max(run() for _ in range(3)))
    return {"tokens_per_s": out}


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "matmul":
        result = matmul(int(args[0]), args[1:])
    elif mode == "train":
        result = train(args[0], int(args[1]), int(args[2]), int(args[3]), args[4] == "1")
    elif mode == "decode":
        result = decode(args[0], [int(b) for b in args[1].split(",")], int(args[2]), int(args[3]), int(args[4]), args[5] == "1")
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
