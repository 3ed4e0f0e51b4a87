"""One sampling interface for every step: HF ``generate`` on CPU, vLLM on GPU.

Consolidation samples on-policy sequences and teacher dreams with it; dreaming
samples dreams; evaluation answers questions.  The caller says which expert
slots are active (``adapters``): ``None`` keeps what the model has active, a
list activates exactly those slots (``[]``: the base alone).  ``noise_scale > 0``
switches on a temporary *random extra expert* (a random low-rank delta on the
MLP down-projections whose output has roughly that relative size), the paper's
router noise used while dreaming; it is removed when the call returns.

vLLM serves one LoRA per request, so :class:`VLLMBackend` combines the
requested slots (and the noise expert) into a single adapter by stacking their
ranks, which is exact: ``Σ_k B_k A_k = [B_1 … B_K] [A_1; …; A_K]``.
vLLM is imported lazily and only exists in the GPU image.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from reverie.workloads.store.modelio import SLOTS_DIR, activate_slots


@dataclass
class Generated:
    """Completions of one :meth:`SamplingBackend.generate` call, in prompt order."""

    texts: list[str]
    token_ids: list[list[int]]
    logprobs: list[list[float]] | None = None  # per generated token, under the model (temperature 1)


class SamplingBackend(Protocol):
    """Sample completions for prompts; deterministic for a given ``seed``."""

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        adapters: Sequence[str] | None = None,
        noise_scale: float = 0.0,
    ) -> Generated: ...


def truncate_at_stop(tokenizer: Any, ids: list[int], stop: Sequence[str]) -> tuple[str, list[int]]:
    """Cut a completion before the first stop string, keeping text and token ids consistent."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [text.find(s) for s in stop if s and s in text]
    if not hits:
        return text, ids
    cut = min(hits)
    for n in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:n], skip_special_tokens=True)) >= cut + 1:
            return text[:cut], ids[: n - 1] if n > 1 else []
    return text[:cut], ids


@contextlib.contextmanager
def active_adapters(model: Any, adapters: Sequence[str] | None) -> Iterator[None]:
    """Temporarily activate exactly ``adapters`` on a PEFT model (``None``: leave as is)."""
    if adapters is None or not hasattr(model, "peft_config"):
        if adapters:
            raise ValueError(f"adapters {list(adapters)} requested, but the model has no expert slots")
        yield
        return

    unknown = [a for a in adapters if a not in model.peft_config]
    if unknown:
        raise ValueError(f"unknown expert slot(s) {unknown}; the model has {list(model.peft_config)}")
    before = list(model.base_model.active_adapters)
    try:
        if adapters:
            activate_slots(model, adapters)
            yield
        else:
            with model.disable_adapter():
                yield
    finally:
        activate_slots(model, before)


def _down_projections(model: Any) -> list[torch.nn.Module]:
    mods = [m for n, m in model.named_modules() if n.endswith("mlp.down_proj")]
    if not mods:
        raise ValueError("random extra expert: the model has no '*.mlp.down_proj' modules")
    return mods


@contextlib.contextmanager
def random_expert(model: Any, *, scale: float, rank: int = 4, seed: int = 0) -> Iterator[None]:
    """A temporary random low-rank expert on every MLP down-projection (``scale`` = relative output size)."""
    if scale <= 0:
        yield
        return
    gen = torch.Generator().manual_seed(seed)
    handles = []
    for mod in _down_projections(model):
        weight = next(p for p in mod.parameters())
        d_in, d_out = weight.shape[1], weight.shape[0]
        a = torch.randn(d_in, rank, generator=gen) / math.sqrt(d_in)
        b = torch.randn(rank, d_out, generator=gen) / math.sqrt(rank)
        a, b = a.to(weight), b.to(weight)

        def hook(_m: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, a: Any = a, b: Any = b) -> Any:
            delta = (inputs[0] @ a) @ b
            # Relative scale: the extra expert perturbs, it does not dominate.
            norm = output.norm(dim=-1, keepdim=True) / (delta.norm(dim=-1, keepdim=True) + 1e-6)
            return output + scale * norm * delta

        handles.append(mod.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class HFBackend:
    """Transformers ``generate``, batched; seeds make sampling reproducible."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        adapters: Sequence[str] | None = None,
        noise_scale: float = 0.0,
    ) -> Generated:
        tok, model = self.tokenizer, self.model
        texts: list[str] = []
        ids_out: list[list[int]] = []
        lps_out: list[list[float]] = []
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with contextlib.ExitStack() as stack:
            stack.enter_context(active_adapters(model, adapters))
            stack.enter_context(random_expert(model, scale=noise_scale, seed=seed or 0))
            # Fork the RNG so a seeded call neither depends on nor disturbs the caller's stream.
            stack.enter_context(torch.random.fork_rng(devices=[]))
            if seed is not None:
                torch.manual_seed(seed)
            greedy = temperature <= 0.0
            # Greedy answers do not depend on their batch: batch prompts of similar length
            # together (less padding to prefill and attend over), then restore the order.
            # Sampling keeps the caller's order, so a seed gives the same samples as before.
            order = list(range(len(prompts)))
            if greedy:
                order.sort(key=lambda i: len(tok(prompts[i], add_special_tokens=False).input_ids))
            for start in range(0, len(prompts), self.batch_size):
                chunk = [prompts[i] for i in order[start : start + self.batch_size]]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else temperature,
                    top_p=None if greedy else top_p,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    return_dict_in_generate=True,
                    output_logits=return_logprobs,
                )
                gen = out.sequences[:, enc["input_ids"].shape[1] :]
                if return_logprobs:
                    logits = torch.stack(out.logits, dim=1).float()
                    lp = torch.log_softmax(logits, -1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)
                for row in range(gen.shape[0]):
                    seq = gen[row].tolist()
                    n = len(seq)
                    for j, t in enumerate(seq):
                        if t == tok.eos_token_id or t == tok.pad_token_id:
                            n = j
                            break
                    seq = seq[:n]
                    text, seq = truncate_at_stop(tok, seq, stop or [])
                    texts.append(text)
                    ids_out.append(seq)
                    if return_logprobs:
                        lps_out.append(lp[row, : len(seq)].tolist())
        model.train(was_training)
        back = sorted(range(len(order)), key=order.__getitem__)  # position in ``order`` of each prompt
        texts, ids_out = [texts[k] for k in back], [ids_out[k] for k in back]
        if return_logprobs:
            lps_out = [lps_out[k] for k in back]
        return Generated(texts=texts, token_ids=ids_out, logprobs=lps_out if return_logprobs else None)


def combine_adapters(
    slot_dirs: Sequence[Path],
    out_dir: Path,
    *,
    weights: Sequence[float] | None = None,
    noise_scale: float = 0.0,
    noise_rank: int = 4,
    seed: int = 0,
) -> Path:
    """Stack several PEFT LoRA adapters (and optionally a random expert) into one exact-sum adapter.

    ``weights`` multiplies each slot's output (default 1); a weight of 0 keeps a
    slot only as a shape template, e.g. for a noise-only adapter.
    """

    blocks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    targets: set[str] = set()
    for d, w in zip(slot_dirs, weights or [1.0] * len(slot_dirs), strict=True):
        cfg = json.loads((d / "adapter_config.json").read_text())
        scaling = cfg.get("lora_alpha", cfg["r"]) / cfg["r"]
        if cfg.get("use_rslora"):
            scaling = cfg.get("lora_alpha", cfg["r"]) / math.sqrt(cfg["r"])
        state = load_file(str(d / "adapter_model.safetensors"))
        for key, a in state.items():
            if ".lora_A." not in key:
                continue
            prefix = key.split(".lora_A.")[0]
            b = state[key.replace(".lora_A.", ".lora_B.")]
            blocks.setdefault(prefix, []).append((a, b * scaling * w))  # fold the scaling into B
            targets.add(prefix.rsplit(".", 1)[-1])
    if noise_scale > 0 and blocks:
        gen = torch.Generator().manual_seed(seed)
        for prefix, pairs in blocks.items():
            if prefix.endswith("down_proj"):
                d_in, d_out = pairs[0][0].shape[1], pairs[0][1].shape[0]
                a = torch.randn(noise_rank, d_in, generator=gen) / math.sqrt(d_in)
                b = noise_scale * torch.randn(d_out, noise_rank, generator=gen) / math.sqrt(noise_rank)
                pairs.append((a.to(pairs[0][0]), b.to(pairs[0][1])))
    rank = max((sum(a.shape[0] for a, _ in p) for p in blocks.values()), default=1)
    out: dict[str, torch.Tensor] = {}
    for prefix, pairs in blocks.items():
        a = torch.cat([x for x, _ in pairs], 0)
        b = torch.cat([y for _, y in pairs], 1)
        pad = rank - a.shape[0]  # every module gets the same rank; zero rows add nothing
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], 0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1)
        out[f"{prefix}.lora_A.weight"] = a.contiguous()
        out[f"{prefix}.lora_B.weight"] = b.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / "adapter_model.safetensors"))
    first = json.loads((slot_dirs[0] / "adapter_config.json").read_text())
    first.update({"r": rank, "lora_alpha": rank, "use_rslora": False, "target_modules": sorted(targets)})
    (out_dir / "adapter_config.json").write_text(json.dumps(first, indent=2))
    return out_dir


class VLLMBackend:
    """vLLM offline engine (GPU image only); expert slots served as one combined LoRA per request."""

    def __init__(
        self,
        model_folder: str | Path,
        tokenizer: Any,
        *,
        slots: Sequence[str] = (),
        max_lora_rank: int = 256,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "bfloat16",
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - GPU image only
            raise RuntimeError(
                "the vllm backend needs the GPU image (pip extra 'gpu'); use backend 'hf' on CPU"
            ) from exc
        self.folder = Path(model_folder)
        self.tokenizer = tokenizer
        self.slots = list(slots)
        self.llm = LLM(
            model=str(self.folder),
            tokenizer=str(self.folder),
            dtype=dtype,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=4,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=0,
        )
        self._lora_dirs: dict[tuple[tuple[str, ...], float, int], Path] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="reverie-vllm-lora-"))

    def _lora(self, adapters: Sequence[str] | None, noise_scale: float, seed: int) -> Any:
        from vllm.lora.request import LoRARequest

        names = tuple(self.slots if adapters is None else adapters)
        if not names and noise_scale <= 0:
            return None
        key = (names, noise_scale, seed if noise_scale > 0 else 0)
        if key not in self._lora_dirs:
            if names:
                dirs, weights = [self.folder / SLOTS_DIR / n for n in names], [1.0] * len(names)
            elif self.slots:  # noise only: the first slot serves as a zero-weight shape template
                dirs, weights = [self.folder / SLOTS_DIR / self.slots[0]], [0.0]
            else:
                raise ValueError("vllm: a random extra expert needs a generation with at least one slot")
            out = self._tmp / f"combo-{len(self._lora_dirs)}"
            self._lora_dirs[key] = combine_adapters(dirs, out, weights=weights, noise_scale=noise_scale, seed=seed)
        idx = list(self._lora_dirs).index(key) + 1
        return LoRARequest(f"combo-{idx}", idx, str(self._lora_dirs[key]))

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        adapters: Sequence[str] | None = None,
        noise_scale: float = 0.0,
    ) -> Generated:  # pragma: no cover - GPU image only
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,
            max_tokens=max_new_tokens,
            temperature=max(temperature, 0.0),
            top_p=top_p if temperature > 0 else 1.0,
            stop=list(stop or []) or None,
            seed=seed,
            logprobs=0 if return_logprobs else None,
        )
        outs = self.llm.generate(
            list(prompts), params, lora_request=self._lora(adapters, noise_scale, seed or 0), use_tqdm=False
        )
        texts, ids, lps = [], [], []
        for o in outs:
            c = o.outputs[0]
            texts.append(c.text)
            ids.append(list(c.token_ids))
            if return_logprobs:
                lps.append([next(iter(d.values())).logprob for d in (c.logprobs or [])])
        return Generated(texts=texts, token_ids=ids, logprobs=lps if return_logprobs else None)


def make_backend(
    name: str, model: Any, tokenizer: Any, *, folder: str | Path | None = None, slots: Sequence[str] = ()
) -> SamplingBackend:
    """``"hf"`` → :class:`HFBackend` on ``model``; ``"vllm"`` → :class:`VLLMBackend` on ``folder``."""
    if name == "hf":
        return HFBackend(model, tokenizer)
    if name == "vllm":
        if folder is None:
            raise ValueError("the vllm backend loads the generation folder itself; pass folder=")
        return VLLMBackend(folder, tokenizer, slots=slots)
    raise ValueError(f"unknown sampling backend {name!r}; use 'hf' or 'vllm'")
