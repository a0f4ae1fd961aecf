"""Loading language models: the embedded SmolLM2 (offline default, :mod:`icrl_lib.engine.embedded`) or any hub id
or local folder; a model's facts (tokenizer, end of turn, window) without its weights; options applied at load."""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from icrl_lib.engine.embedded import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    cache_root,
    embedded_gguf_file,
    embedded_model_path,
)
from icrl_lib.errors import UserError
from icrl_lib.paper.prompts import supports_system_role


@dataclass(frozen=True)
class ModelFacts:
    """What a run needs to know of its model before any weight is read: the tokenizer and what the chat template
    and the model's config say (found once, by :func:`model_facts`)."""

    name: str
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    eot_id: int  # end-of-turn token that closes an assistant message
    context_window: int  # maximum positions the model supports (after any YaRN scaling)
    system_role: bool  # whether the chat template accepts a system message
    yarn_factor: float | None = None  # YaRN rope scaling applied over the model's own config (None: none)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as written (chat templates already render BOS when they want one)."""
        return encode(self.tokenizer, text)

    def encode_batch(self, texts) -> list[list[int]]:
        """:meth:`encode` for many texts in one tokenizer call (parallel in fast tokenizers)."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []


@dataclass(frozen=True)
class LanguageModel(ModelFacts):
    """A loaded causal LM: its facts plus the weights and where they run."""

    model: Any = None  # transformers PreTrainedModel
    device: str = "cpu"
    cache_arg: str = "past_key_values"  # forward() keyword of the KV cache ("cache" from transformers 5.24 on)

    @property
    def dtype_name(self) -> str:
        """The type the weights are in, by name (``float32``, ``bfloat16``...): what ``meta.json`` records."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token costs (keys + values over all layers)."""
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", cfg)
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elem = next(self.model.parameters()).element_size()
        return 2 * cfg.num_hidden_layers * heads * head_dim * elem



def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` exactly as written, no special tokens added (the one encoding rule)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``mps``, else ``cpu``; other values are checked and returned."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here; allowed here: auto, cpu")
    return device


def find_eot_id(tokenizer) -> int:
    """The token that ends an assistant turn, read off the chat template (not a hard-coded table).

    Renders a one-message assistant turn and takes the first token after its content; falls back to the
    tokenizer's EOS when the template puts nothing special there.
    """
    marker = "ICRLMARKER"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    tail = text[text.rindex(marker) + len(marker):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    if ids and ids[0] in special:
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise ValueError("cannot tell the end-of-turn token: the chat template ends assistant turns with no special "
                         "token and the tokenizer has no eos_token")
    return int(tokenizer.eos_token_id)


def _context_window(config, tokenizer) -> int:
    cfg = getattr(config, "text_config", config)
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    raise ValueError("cannot tell the model's context window; set max_context_examples explicitly")


@dataclass(frozen=True)
class ModelSource:
    """Where ``model_name`` resolved to, found before any run folder is made or weights are read."""

    name: str  # as the user gave it
    kind: str  # "embedded" | "local" | "hub"
    location: str  # alias, folder or hub id
    local_files_only: bool = False  # hub model found in the local cache while the hub is unreachable


HUB_TIMEOUT_S = 10  # one lookup on the hub; transformers' own retries would take ~50 s to say the same


def resolve_model(model_name: str, hf_token: str | None = None) -> ModelSource:
    """Find ``model_name``: an embedded alias, an existing local model folder, or a hub id (local cache, then one
    short hub lookup). UserError naming ``model_name`` and what was tried, in one line, when none applies."""
    if model_name in EMBEDDED_MODELS:
        entry = EMBEDDED_MODELS[model_name]
        converted = cache_root() / "models" / model_name / "config.json"
        if not converted.is_file() and importlib.util.find_spec(entry.package) is None:
            raise UserError(f"model_name: {model_name!r} is embedded in the package {entry.package!r}, which is not "
                            f"installed: {entry.pip_hint}")
        return ModelSource(model_name, "embedded", model_name)
    tried = f"not an embedded alias ({', '.join(EMBEDDED_MODELS)})"
    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model_name: the local folder {path} has no config.json; give a folder written by "
                            "save_pretrained, a hub id or an embedded alias")
        return ModelSource(model_name, "local", str(path))
    if path.exists() or model_name.startswith(("/", ".", "~")) or model_name.count("/") > 1:
        raise UserError(f"model_name: {model_name!r} is {tried}, and no local model folder {path} exists")
    return _resolve_hub(model_name, hf_token, tried + f", no local folder ./{model_name}")


def _resolve_hub(repo_id: str, hf_token: str | None, tried: str) -> ModelSource:
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"model_name: {repo_id!r} is {tried}, and not a valid hub id (owner/name)") from None
    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return ModelSource(repo_id, "hub", repo_id, local_files_only=True)
        raise UserError(f"model_name: {repo_id!r} is {tried}, not in the local hub cache, and HF_HUB_OFFLINE is set")
    try:
        model_info(repo_id, token=hf_token or os.environ.get("HF_TOKEN") or None, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise UserError(f"model_name: {repo_id!r} is gated on the hub: accept its terms on huggingface.co and set "
                        "HF_TOKEN to a token with access") from None
    except RepositoryNotFoundError:
        raise UserError(f"model_name: {repo_id!r} is {tried}, and the hub has no such model (or it is private: set "
                        "HF_TOKEN to a token with access)") from None
    except Exception as err:  # noqa: BLE001 - network errors come from httpx/requests depending on the version
        if cached:
            return ModelSource(repo_id, "hub", repo_id, local_files_only=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"model_name: {repo_id!r} is {tried}, not in the local hub cache, and the hub could not be "
                        f"reached ({reason})") from None
    return ModelSource(repo_id, "hub", repo_id)


def _location(model_name: str, source: ModelSource, trust_remote_code: bool, token: str | None
              ) -> tuple[str, dict[str, Any]]:
    """Where transformers loads ``source`` from, and the keyword arguments every ``from_pretrained`` call shares."""
    location = str(embedded_model_path(model_name)) if source.kind == "embedded" else source.location
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.kind == "hub":
        common["local_files_only"] = source.local_files_only
        if token:  # only the hub needs it
            common["token"] = token
    return location, common


def with_yarn(config: Any, factor: float) -> Any:
    """``config`` with YaRN rope scaling by ``factor`` over its trained positions (``max_position_embeddings``, which
    grows by ``factor``): what Qwen2.5's model cards ask for beyond 32K tokens, and what the paper did to reach 128K.
    transformers 5 reads ``rope_parameters`` (flat, or one dict per layer type), 4.x ``rope_scaling``."""
    cfg = getattr(config, "text_config", config)
    original = cfg.max_position_embeddings
    yarn = {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": original}
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        cfg.rope_parameters = {kind: {**p, **yarn} for kind, p in params.items()}
    elif isinstance(params, dict):
        cfg.rope_parameters = {**params, **yarn}
    else:
        cfg.rope_scaling = {**yarn, "type": "yarn"}
    cfg.max_position_embeddings = int(original * factor)
    return config


def model_facts(model_name: str, source: ModelSource, trust_remote_code: bool = False,
                hf_token: str | None = None, yarn_factor: float | None = None) -> ModelFacts:
    """The model's tokenizer and facts, read from its tokenizer and config files alone (seconds, no weights): a run
    is planned, and its labels checked, with these before the model loads."""
    token = hf_token or os.environ.get("HF_TOKEN") or None
    location, common = _location(model_name, source, trust_remote_code, token)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, **common)
    config = _config(location, common, yarn_factor)
    return ModelFacts(model_name, tokenizer, find_eot_id(tokenizer), _context_window(config, tokenizer),
                      supports_system_role(tokenizer), yarn_factor)


# Tokenizer classes with no model-specific behaviour: the class a tokenizer_config.json names, and what AutoTokenizer
# loads for it from tokenizer.json alone (AutoTokenizer only ever redirects other classes to these).
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def find_model(model_name: str, hf_token: str | None = None, trust_remote_code: bool = False,
               yarn_factor: float | None = None) -> tuple[ModelSource, ModelFacts]:
    """Where ``model_name``'s weights load from (:func:`resolve_model`) and what a run needs to know of them
    (:func:`model_facts`), before any weight is read: what a run plan asks of this module, in one call."""
    source = resolve_model(model_name, hf_token)
    return source, model_facts(model_name, source, trust_remote_code, hf_token, yarn_factor)


def load_tokenizer(model_name: str, source: ModelSource, trust_remote_code: bool = False,
                   hf_token: str | None = None) -> Any:
    """The tokenizer :func:`model_facts` loads, without the model's weights or config (so without torch where it can).

    A local folder (the embedded model's converted one included) whose ``tokenizer_config.json`` names a generic
    class (:data:`GENERIC_TOKENIZERS`) and no code of its own is read by that class straight away: about a second
    less than ``AutoTokenizer``, which reads the model's config and so imports torch. The embedded model not yet
    converted gives the tokenizer of its GGUF file (what the conversion saves; no weight is read). Anything else
    goes through ``AutoTokenizer`` as :func:`model_facts` does.
    """
    token = hf_token or os.environ.get("HF_TOKEN") or None
    converted = cache_root() / "models" / model_name
    if source.kind == "embedded" and EMBEDDED_MODELS[model_name].gguf_file and not all(
            (converted / f).is_file() for f in ("config.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        gguf = embedded_gguf_file(model_name)
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    location, common = _location(model_name, source, trust_remote_code, token)
    declared = _declared_tokenizer(Path(location)) if source.kind != "hub" else None
    if declared in GENERIC_TOKENIZERS:
        import transformers

        return getattr(transformers, declared).from_pretrained(location, **common)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location, **common)


def _declared_tokenizer(folder: Path) -> str | None:
    """The tokenizer class a local folder's ``tokenizer_config.json`` names, when it has a ``tokenizer.json`` and no
    code of its own (``auto_map``); None otherwise."""
    try:
        declared = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(declared, dict) or "auto_map" in declared or not (folder / "tokenizer.json").is_file():
        return None
    return declared.get("tokenizer_class")


def _config(location: str, common: dict[str, Any], yarn_factor: float | None) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, **common)
    return config if yarn_factor is None else with_yarn(config, yarn_factor)


def load_model(
    model_name: str = DEFAULT_MODEL,
    device: str = "auto",
    trust_remote_code: bool = False,
    hf_token: str | None = None,
    source: ModelSource | None = None,
    facts: ModelFacts | None = None,
    yarn_factor: float | None = None,
    dtype: str = "auto",
) -> LanguageModel:
    """Load ``model_name``: an embedded alias, a hub id or a local folder (``source``: already resolved;
    ``facts``: already read by :func:`model_facts`, as a run's plan holds them).

    On CUDA the model is loaded with ``device_map="auto"``. ``dtype`` (:func:`resolve_dtype`): ``auto`` is bf16 on
    CUDA (fp16 where bf16 is unsupported) and fp32 elsewhere (bf16 matmuls are several times slower on CPUs without
    AMX); ``float32``, ``bfloat16`` or ``float16`` force that type. The token comes from ``hf_token`` or the
    ``HF_TOKEN`` environment variable and is passed to the hub only, never stored. ``yarn_factor``: YaRN rope
    scaling over the model's config (:func:`with_yarn`).
    """
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    avoid_cudnn_attention(device)
    token = hf_token or os.environ.get("HF_TOKEN") or None
    source = source or resolve_model(model_name, token)
    location, common = _location(model_name, source, trust_remote_code, token)
    facts = facts or model_facts(model_name, source, trust_remote_code, token, yarn_factor)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device)}
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto" if device == "cuda" else device
    if facts.yarn_factor is not None:
        kwargs["config"] = _config(location, common, facts.yarn_factor)
    model = AutoModelForCausalLM.from_pretrained(location, attn_implementation="sdpa", **kwargs, **common)
    if not device.startswith("cuda"):
        model.to(device)
    model.eval()
    return LanguageModel(**{f.name: getattr(facts, f.name) for f in fields(ModelFacts)}, model=model,
                         device=str(next(model.parameters()).device), cache_arg=cache_argument(model))


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype a model is loaded in on ``device`` (already resolved): ``auto`` -> bf16 on CUDA (fp16 where
    bf16 is unsupported), fp32 on CPU and MPS; ``float32`` | ``bfloat16`` | ``float16`` -> that type."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype: got {dtype!r}; allowed: auto, float32, bfloat16, float16")
    return getattr(torch, dtype)


def check_dtype(lm: LanguageModel, dtype: str) -> None:
    """UserError naming ``dtype`` where ``lm`` (loaded already) is not in the type ``dtype`` gives on its device."""
    want = str(resolve_dtype(dtype, lm.device)).removeprefix("torch.")
    if lm.dtype_name != want:
        asked = dtype if dtype != "auto" else f"auto ({want} on {lm.device})"
        raise UserError(f"dtype: the loaded model is {lm.dtype_name}, the config asks for {asked}; load it with "
                        f"load_model(..., dtype={dtype!r}) or set dtype: {lm.dtype_name}")


def avoid_cudnn_attention(device: str) -> None:
    """On CUDA, keep SDPA off its cuDNN backend (flash / memory-efficient kernels stay on).

    cuDNN attention builds an execution plan for every new (query, key) length, and ICRL's lengths change at every
    forward: on an H200 that cost 4 ms of CPU per attention call against 0.2 ms on the GPU, and made the packed
    test evaluation 5x slower than its forwards' GPU time (benchmarks/README.md, "On a GPU").
    """
    if device.startswith("cuda"):
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)


def cache_argument(model) -> str:
    """The keyword ``model.forward`` takes the KV cache by: ``cache`` (transformers >= 5.24, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (older releases and most remote-code models)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
