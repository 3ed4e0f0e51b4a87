"""GPU check of the consolidation step (bf16 step time, MFU) and of dreaming's generation (vLLM vs HF).

Run by ``bench/gpu/run.sh`` on a machine with a CUDA GPU; no network needed:
the model is a randomly initialised Qwen2 built from a config (the throughput of
a step does not depend on what the weights know), saved as a generation folder
so vLLM can serve it.

1. **Distillation step**: the self-study stage's step (student forward on the
   completion positions, top-k forward KL + CE, backward into the new LoRA slot,
   AdamW) in bf16 on one GPU.  MFU = achieved FLOP/s over the GPU's dense bf16
   peak, with FLOPs per step = 2·N·T (forward) + 2·N·T (backward to the
   activations; the frozen base gets no weight gradient) + 6·N_slot·T, N the
   base parameters without embeddings, T the tokens in the batch.
2. **Generation**: the same prompts through HF ``generate`` (HFBackend) and
   vLLM (VLLMBackend, the slot served as a LoRA), tokens/s of generated tokens.

Writes one JSON object to stdout and to ``$OUT/gpu.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--answer-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gen-prompts", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=128)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"

    from reverie.workloads.ml.expansion import add_slot, slot_parameters
    from reverie.workloads.ml.lm import answer_cross_entropy, completion_logits
    from reverie.workloads.ml.losses import topk_forward_kl
    from reverie.workloads.ml.tiny import build_tiny_model, build_tokenizer
    from reverie.workloads.store.modelio import save_generation

    words = [f"w{i}" for i in range(4000)]
    tok = build_tokenizer([" ".join(words[i : i + 40]) for i in range(0, 4000, 40)], vocab_size=8192)
    model = build_tiny_model(
        tok, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers
    )
    n_base = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    model, slot = add_slot(
        model,
        rank=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        keep_active=[],
    )
    params = list(slot_parameters(model, slot).values())
    n_slot = sum(p.numel() for p in params)
    model.to("cuda", dtype=torch.bfloat16)
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    vocab = len(tok)
    prompts = [torch.randint(10, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]
    answers = [torch.randint(10, vocab, (args.answer_len,), generator=g).tolist() for _ in range(args.batch)]
    k = 20
    ids = torch.randint(0, vocab, (args.batch, args.answer_len, k), generator=g).cuda()
    lps = torch.log_softmax(torch.randn(args.batch, args.answer_len, k, generator=g), -1).cuda()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, mask, targets = completion_logits(model, tok, prompts, answers)
        loss = topk_forward_kl(logits, ids, lps, mask) + answer_cross_entropy(logits, targets, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    model.train()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.steps
    tokens = args.batch * (args.prompt_len + args.answer_len)
    flops = 4 * n_base * tokens + 6 * n_slot * tokens
    out: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(),
        "baseParams": n_base,
        "slotParams": n_slot,
        "batch": args.batch,
        "tokensPerStep": tokens,
        "stepSeconds": step_s,
        "tokensPerS": tokens / step_s,
        "mfu": flops / step_s / peak_flops(),
        "peakMemGiB": torch.cuda.max_memory_allocated() / 2**30,
    }

    # Generation: HF generate vs vLLM on the same prompts.
    from reverie.workloads.ml.sampling import HFBackend

    model.eval()
    texts = [tok.decode(p[:64]) for p in prompts] * (args.gen_prompts // args.batch + 1)
    texts = texts[: args.gen_prompts]
    hf = HFBackend(model, tok, batch_size=args.gen_prompts)
    t0 = time.perf_counter()
    got = hf.generate(texts, max_new_tokens=args.gen_tokens, temperature=1.0, seed=0, adapters=[slot])
    hf_s = time.perf_counter() - t0
    out["hfTokensPerS"] = sum(len(t) for t in got.token_ids) / hf_s
    try:
        from reverie.workloads.ml.sampling import VLLMBackend

        folder = save_generation(model.float(), tok, Path(tempfile.mkdtemp()) / "g", slots=[slot])
        opt.state.clear()
        model.cpu()  # leave the GPU's memory to vLLM
        torch.cuda.empty_cache()
        vb = VLLMBackend(folder, tok, slots=[slot], gpu_memory_utilization=0.6)
        vb.generate(texts[:4], max_new_tokens=8, temperature=1.0, seed=0)  # warm-up (graphs, LoRA load)
        t0 = time.perf_counter()
        got = vb.generate(texts, max_new_tokens=args.gen_tokens, temperature=1.0, seed=0)
        v_s = time.perf_counter() - t0
        out["vllmTokensPerS"] = sum(len(t) for t in got.token_ids) / v_s
        out["vllmSpeedup"] = out["vllmTokensPerS"] / out["hfTokensPerS"]  # type: ignore[operator]
    except (ImportError, RuntimeError) as exc:
        out["vllm"] = f"not measured: {type(exc).__name__}: {exc}"[:300]
    text = json.dumps(out, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
