"""PyTorch CPU doing the same work as `cargo xtask bench model`, for the ratios in its tables.

`cargo xtask bench model` keeps one process warm for the whole benchmark and asks it for one
figure at a time, alternating with its own rounds:
  bench_torch.py serve THREADS
    reads one JSON request per line and answers one JSON line each, {"value": x} or
    {"error": "..."}; requests are
      {"op": "matmul", "m": M, "k": K, "n": N}                      -> GFLOP/s of x[m,k] @ w[n,k]^T
      {"op": "train", "config": CONFIG_JSON, "batch": B, "len": L, "pretrained": bool}
                                                                     -> tokens/s, fwd+bwd+AdamW
      {"op": "decode", "config": CONFIG_JSON, "batch": B, "prompt": P, "steps": S, "pretrained": bool}
                                                                     -> tokens/s, greedy, KV cache
    Models stay loaded between requests, as the Rust side's do.

One-shot forms, printing one JSON object (scripts/device_bench.sh uses them):
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


def matmul_gflops(m, k, n):
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
    return 2 * m * n * k / median(times) / 1e9


def matmul(threads, shapes):
    torch.set_num_threads(threads)
    return {"gflops": [matmul_gflops(*map(int, shape.split(","))) for shape in shapes]}


MODELS = {}


def load(cfg_path, pretrained):
    """The model of a config, loaded once per process (seeded, so every load is the same)."""
    key = (os.path.abspath(cfg_path), pretrained)
    if key not in MODELS:
        torch.manual_seed(0)
        MODELS[key] = load_new(cfg_path, pretrained)
    return MODELS[key]


def load_new(cfg_path, pretrained):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(cfg_path)
    cfg._attn_implementation = "sdpa"
    if pretrained:
        return cfg, AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(cfg_path)), config=cfg, torch_dtype=torch.float32).to(DEVICE)
    return cfg, AutoModelForCausalLM.from_config(cfg).float().to(DEVICE)


def train_tokens_per_s(cfg_path, tb, tl, pretrained):
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
    return tb * tl / median(times)


def train(cfg_path, tb, tl, threads, pretrained):
    torch.set_num_threads(threads)
    return {"tokens_per_s": train_tokens_per_s(cfg_path, tb, tl, pretrained)}


def decode_tokens_per_s(cfg_path, db, pl, steps, pretrained):
    cfg, model = load(cfg_path, pretrained)
    torch.manual_seed(db)
    with torch.no_grad():
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
        return max(run() for _ in range(3))


def decode(cfg_path, batches, pl, steps, threads, pretrained):
    torch.set_num_threads(threads)
    return {"tokens_per_s": [decode_tokens_per_s(cfg_path, db, pl, steps, pretrained) for db in batches]}


def answer(request):
    op = request["op"]
    if op == "matmul":
        return matmul_gflops(request["m"], request["k"], request["n"])
    if op == "train":
        return train_tokens_per_s(request["config"], request["batch"], request["len"], request["pretrained"])
    if op == "decode":
        return decode_tokens_per_s(request["config"], request["batch"], request["prompt"], request["steps"], request["pretrained"])
    raise ValueError(f"unknown op {op!r}")


def serve(threads):
    torch.set_num_threads(threads)
    for line in sys.stdin:
        try:
            reply = {"value": answer(json.loads(line))}
        except Exception as e:  # the benchmark goes on without this figure
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        return serve(int(args[0]))
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
