"""Shared helpers for the benchmarks: machine description and time spent inside the model's forward."""
from __future__ import annotations

import argparse
import os
import platform
import time
from contextlib import contextmanager

import torch


def machine() -> str:
    """One line describing where the numbers were measured."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch threads {torch.get_num_threads()}")
    return f"{device}; torch {torch.__version__}; python {platform.python_version()}"


@contextmanager
def forward_timer(model):
    """Accumulate wall time spent inside ``model.forward`` (the raw forward passes) while the block runs."""
    spent = {"seconds": 0.0, "calls": 0, "tokens": 0, "kept": 0}
    original = model.forward

    def timed(*args, **kwargs):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        spent["seconds"] += time.perf_counter() - start
        spent["calls"] += 1
        ids = kwargs.get("input_ids")
        spent["tokens"] += int(ids.numel()) if ids is not None else 0
        keep = kwargs.get("logits_to_keep")  # LM-head positions computed (an int keeps the last ones)
        spent["kept"] += int(keep.numel()) if isinstance(keep, torch.Tensor) else int(keep or 0)
        return out

    model.forward = timed  # nn.Module.__call__ dispatches to the instance attribute
    try:
        yield spent
    finally:
        del model.forward


def forward_flops(model, tokens: int, keys_per_token: float, logits: int = 0) -> float:
    """Model FLOPs of ``tokens`` tokens that attend to ``keys_per_token`` keys on average (2 per multiply-add):
    the layers' matrix products, attention scores and weighted values, and ``logits`` positions of the LM head."""
    cfg = getattr(model.config, "text_config", model.config)
    hidden, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    kv = (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    per_layer = hidden * (heads * head_dim) * 2 + hidden * kv * 2 + 3 * hidden * cfg.intermediate_size
    linear = 2 * per_layer * layers * tokens
    attention = 4 * heads * head_dim * layers * tokens * keys_per_token
    return linear + attention + 2 * hidden * vocab * logits


RANDOM_LLAMA = "random-llama-3.1-8b"
RANDOM_SCALED = "random-llama-scaled"  # Llama 3.1's layout, scaled down for long contexts on a CPU
SCALED_SHAPE = dict(hidden_size=256, intermediate_size=896, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)


def load_bench_model(model_name: str, layers: int | None = None, tokenizer: str | None = None,
                     dtype: str | None = None):
    """The model a benchmark runs: any ``load_model`` name, or ``random-llama-3.1-8b``.

    ``random-llama-3.1-8b`` has Meta-Llama-3.1-8B-Instruct's architecture (from its published config) with random
    weights, bf16 on GPU: throughput does not depend on the weights, and it needs no hub access. It borrows the
    embedded SmolLM2 tokenizer (its ids are all < Llama's 128,256), or the tokenizer saved in the folder
    ``tokenizer`` (``save_bench_tokenizer``: the 98 MB GGUF need not travel to a GPU machine). ``layers`` shrinks
    it for a smoke test on CPU. ``dtype`` (``float32``, ``bfloat16``, ``float16``) overrides bf16 on GPU, fp32 on CPU,
    for any model (the ``dtype`` field of a run).
    """
    from icrl_lib.engine.models import (
        DEFAULT_MODEL,
        LanguageModel,
        avoid_cudnn_attention,
        cache_argument,
        find_eot_id,
        load_model,
        resolve_device,
    )
    from icrl_lib.paper.prompts import supports_system_role

    if model_name not in (RANDOM_LLAMA, RANDOM_SCALED):
        return load_model(model_name, dtype=dtype or "auto")
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        eot_id, system_role = find_eot_id(tok), supports_system_role(tok)
    else:
        small = load_model(DEFAULT_MODEL)  # tokenizer, end-of-turn and chat template
        tok, eot_id, system_role = small.tokenizer, small.eot_id, small.system_role
    shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8) if model_name == RANDOM_LLAMA else dict(SCALED_SHAPE)
    if layers:
        shape["num_hidden_layers"] = layers
    config = LlamaConfig(  # meta-llama/Meta-Llama-3.1-8B-Instruct config.json (or its layout, scaled down)
        vocab_size=128256, **shape, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        attn_implementation="sdpa")
    device = resolve_device("auto")
    avoid_cudnn_attention(device)
    dtype = getattr(torch, dtype) if dtype else torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return LanguageModel(name=model_name, model=model, tokenizer=tok, eot_id=eot_id,
                         context_window=config.max_position_embeddings, system_role=system_role,
                         device=str(next(model.parameters()).device), cache_arg=cache_argument(model))


def save_bench_tokenizer(folder: str) -> None:
    """Save the embedded SmolLM2 tokenizer (with its chat template) to ``folder`` for ``--tokenizer``."""
    from icrl_lib.engine.models import DEFAULT_MODEL, load_model

    load_model(DEFAULT_MODEL).tokenizer.save_pretrained(folder)


def parser(doc: str, task_name: str) -> argparse.ArgumentParser:
    """Command-line flags every benchmark takes: the model (``--layers`` for the random Llama), task and data."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name", default="smollm2-135m-instruct",
                    help=f"embedded alias, hub id, local folder, or {RANDOM_LLAMA} (random weights, GPU)")
    ap.add_argument("--layers", type=int, default=None, help=f"{RANDOM_LLAMA} only: fewer layers (CPU smoke test)")
    ap.add_argument("--tokenizer", default=None,
                    help=f"{RANDOM_LLAMA} only: a saved tokenizer folder (default: the embedded SmolLM2's)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="weights and activations (default: as the dtype field's auto, bfloat16 on GPU, float32 on "
                         "CPU)")
    ap.add_argument("--task_name", default=task_name)
    ap.add_argument("--data_dir", default=None,
                    help="local data folder (default: as icrl_lib.tasks.task.resolve_data_dir)")
    return ap


def icrl_renderer(lm, task, episodes: list):
    """``render(query)``: the ICRL prompt for ``query`` over ``episodes`` (a list the caller grows), or the context
    alone (``query`` None), rendered as a run renders them: what benchmarks 1 and 7 build their real contexts with."""
    from icrl_lib.paper.prompts import build_messages, render_context, render_prompt, system_prompt

    system = system_prompt(True, task.description)

    def render(query):
        msgs = build_messages(system, episodes, query, icrl=True, prediction_prefix=task.prediction_prefix,
                              system_role=lm.system_role)
        return (render_prompt(lm.tokenizer, msgs, task.prediction_prefix) if query
                else render_context(lm.tokenizer, msgs))

    return render
