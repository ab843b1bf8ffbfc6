"""Golden fixtures for rstar2-model, in the style of llm.c's test_gpt2: small random-weight
Qwen2, Qwen3 and Llama models from HF transformers, with their logits, loss, every parameter
gradient, and the losses of several AdamW steps. Run by `cargo xtask gen-fixtures` (needs torch
and transformers); the output in tests/fixtures/ is committed.
"""
import json, os, sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, pad_token_id=None)
MODELS = {
    "qwen2-tied": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True, rope_theta=10000.0)),
    "qwen3-untied": (Qwen3Config, Qwen3ForCausalLM, dict(tie_word_embeddings=False, head_dim=8, rope_theta=1000000.0)),
    "llama-untied": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False, rope_theta=100000.0)),
}
SEQS = [[5, 17, 3, 90, 44, 12, 7, 61, 2], [33, 8, 71, 20, 95]]
LR, STEPS = 1e-2, 3

def loss_of(model):
    total, count = 0.0, 0
    for s in SEQS:
        ids = torch.tensor([s])
        logits = model(input_ids=ids).logits[0]
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        total = total - lp.gather(1, ids[0, 1:, None]).sum()
        count += len(s) - 1
    return total / count

def main():
    torch.manual_seed(0)
    for seed, (name, (cfg_cls, model_cls, extra)) in enumerate(MODELS.items()):
        cfg = cfg_cls(**COMMON, **extra)
        cfg._attn_implementation = "eager"
        torch.manual_seed(1000 + seed)
        model = model_cls(cfg).float()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.normal_(0.0, 0.1)
                elif "norm" in n:
                    p.uniform_(0.5, 1.5)
                else:
                    p.normal_(0.0, 0.2)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        if os.path.exists(os.path.join(d, "generation_config.json")):
            os.remove(os.path.join(d, "generation_config.json"))
        tensors = {}
        for i, s in enumerate(SEQS):
            tensors[f"logits.{i}"] = model(input_ids=torch.tensor([s])).logits[0].detach().contiguous()
        loss = loss_of(model)
        loss.backward()
        for n, p in model.named_parameters():
            tensors[f"grad.{n}"] = p.grad.detach().clone().contiguous()
        tensors["loss"] = loss.detach().reshape(1)
        model.zero_grad()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            l = loss_of(model)
            losses.append(l.item())
            l.backward()
            opt.step()
        losses.append(loss_of(model).item())
        tensors["adamw_losses"] = torch.tensor(losses)
        save_file(tensors, os.path.join(d, "expected.safetensors"))
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"seqs": SEQS, "lr": LR, "steps": STEPS, "weight_decay": 0.01}, f)
        print(name, "loss", loss.item(), "adamw", losses)

TOKENIZER_TEXTS = [
    "def f(n):\n    return n * (n + 1) // 2\nprint(f(10**6))",
    "The answer is \\boxed{1,234,567} and 3.14159 or -42.",
    "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n<reason>",
    "Unicode: café, naïve, 数学, ∑_{k=1}^{n} k², emoji 🙂",
    "<tool_call>\n{\"name\": \"python\", \"arguments\": {\"code\": \"print(1)\"}}\n</tool_call>",
]

def tokenizer_fixture():
    """A byte-level BPE trained here with HF tokenizers, and its encodings of a few texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = TOKENIZER_TEXTS * 3 + ["print(sum(i * i for i in range(100)))", "import math\nmath.comb(40, 20)"] * 5
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    d = os.path.join(OUT, "tokenizer")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    expected = [{"text": t, "ids": tok.encode(t).ids, "decoded": tok.decode(tok.encode(t).ids, skip_special_tokens=False)} for t in TOKENIZER_TEXTS]
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)

if __name__ == "__main__":
    main()
    tokenizer_fixture()
