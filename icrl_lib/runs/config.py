"""One experiment configuration: the paper's ``run_experiment.py`` parameters (same names) plus ours.

Every field has a default and a one-line help. Unknown or mistyped keys fail loudly, naming the key and close
matches; values are checked (names and ranges) before any data or model is loaded. ``hf_token`` is never
written out: it only sets ``HF_TOKEN`` for the running process.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from icrl_lib.errors import UserError, os_error
from icrl_lib.paper.strategies import check_parameters
from icrl_lib.paths import resolve_path
from icrl_lib.serving.backends import DEFAULT_BACKEND, SERVER_BACKENDS, Backend, backend_help, check_backend
from icrl_lib.tasks.sources import data_dir_param
from icrl_lib.tasks.task import TaskName, parse_task_name

# Fields that change what an experiment computes; the others (where it runs, how it reports) may differ on resume.
NON_RESULT_FIELDS = frozenset({"verbose", "output_dir", "data_dir", "device", "fast", "batch_size", "log_every",
                               "debug_k", "hf_token", "server_url", "api_key_env", "request_timeout",
                               "request_retries", "server_concurrency", "allow_approximate"})
# Result fields that are not part of a run's identity: a larger train_k continues the same run (its stream begins
# with the shorter one's), so the run folder does not depend on it.
EXTENDABLE_FIELDS = frozenset({"train_k"})
# Values of ``dtype``: ``auto`` is load_model's own choice by device; the others are torch dtypes by name.
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Where the command line's default differs from the dataclass's: the paper's parser left --test_k at None.
CLI_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({"test_k": None})


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class ExperimentConfig:
    """Parameters of one ICRL/ICL experiment (defaults: the paper's explorative ICRL on Banking77)."""

    model_name: str = _f("smollm2-135m-instruct", "embedded alias, Hugging Face hub id or local model folder")
    task_name: str = _f("banking77", "banking77 | clinic150 | trec_coarse | trec_fine | nlu or a task file path, "
                        "+ _top<k> / _unsemantic")
    context_strategy_name: str = _f("random_unbiased_only_positive", "which past episodes enter the context")
    temperature: float = _f(1.0, "sampling temperature of the constrained decoding (0: greedy)")
    context_p_keep: float = _f(0.1, "probability of keeping each eligible episode in a context")
    max_context_examples: int | None = _f(None, "max episodes in a context; None: as many as fit; 0: zero-shot")
    icrl: bool = _f(True, "ICRL (predictions + rewards in context); False: ICL with gold labels")
    icrl_omit_feedback: bool = _f(False, "ICRL ablation: drop the feedback turns from the context")
    icrl_flip_feedback: bool = _f(False, "ICRL ablation: invert the shown reward with icrl_flip_feedback_prob")
    icrl_flip_feedback_prob: float | None = _f(None,
                                               "probability of flipping the shown reward (with icrl_flip_feedback)")
    max_contexts: int | None = _f(None, "approximate strategies: number K of contexts (paper flag default -1: unset)")
    approximate_context_sampling_method: str | None = _f(None, "approximate strategies: uniform | exact")
    train_k: int = _f(10000, "training steps (inputs in the training stream)")
    test_every: int = _f(500, "test at step 0, after every test_every steps and at the last step")
    test_k: int | None = _f(500, "test examples; None: the whole test split")
    exemplars_per_label: int = _f(0, "gold exemplars per label placed at the start of every context")
    debug_k: int = _f(10, "write the full prompt of the first debug_k model calls to debug_prompts.txt")
    seed: int = _f(100, "seed of contexts, sampling and feedback flips (each step uses seed + step)")
    training_seed: int = _f(100, "seed that shuffles the training split")
    test_seed: int = _f(100, "seed that shuffles the test split")
    verbose: bool = _f(False, "log every step's context and prediction")
    data_dir: str | None = _f(None, "local data folder (layout of ../shared/data) or 'hub'; None: $ICRL_DATA_DIR, "
                                    "else ../shared/data beside the checkout if present, else the hub")
    output_dir: str = _f("outputs", "folder that holds one sub-folder per run")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps")
    max_window_tokens: int | None = _f(None, "cap on the token window used when max_context_examples is None")
    fast: bool = _f(True, "reuse the context's KV cache and pack queries (False: recompute every prompt)")
    batch_size: int | None = _f(None, "test queries per packed forward; None: chosen from memory")
    trust_remote_code: bool = _f(False, "allow model code from the hub (off unless you trust the repository)")
    system_prompt: str | None = _f(None, "system prompt wording; None: the paper's (ICRL or ICL variant)")
    hf_token: str | None = _f(None, "Hugging Face token for gated models; never stored (prefer $HF_TOKEN)", repr=False)
    log_every: int = _f(25, "headless runs print a progress line every log_every steps (and at test steps)")
    backend: str = _f(DEFAULT_BACKEND, backend_help())
    server_url: str | None = _f(None, "the inference server's address, e.g. http://127.0.0.1:8080 (server backends)")
    server_model: str | None = _f(None, "the served model's id; None: the server's only model (hosted: required)")
    api_key_env: str | None = _f(None, "environment variable that holds the server's API key (the key is never stored)")
    request_timeout: float = _f(600.0, "seconds to wait for one answer of the server")
    request_retries: int = _f(5, "tries again after a timeout, 429 or 5xx (with backoff) before the run stops")
    server_concurrency: int | None = _f(None, "requests in flight at once on a server; None: the route's choice: 1 "
                                              "where the server draws (its seeds reproduce only one at a time)")
    allow_approximate: bool = _f(False, "run a backend whose sampling law is not the paper's (e.g. llamacpp-choice); "
                                        "its runs carry the backend's name")
    yarn_factor: float | None = _f(None, "YaRN rope scaling of the positions the model was trained on, applied at load "
                                         "(the paper: 4.0 for Qwen2.5's 128K windows); None: the model's config")
    dtype: str = _f("auto", "local model's weights and activations: auto (CUDA: bfloat16, or float16 without bf16; "
                            "else float32) | float32 | bfloat16 | float16")

    def __post_init__(self) -> None:
        # Normalised once, here, so YAML (temperature: 1), the CLI and notebooks (1.0) give one run identity.
        if self.max_contexts == -1:  # the paper's parser default means "not set"
            object.__setattr__(self, "max_contexts", None)
        for name, annotation in _field_types().items():
            value = getattr(self, name)
            if float in _allowed_types(annotation) and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self.validate()  # the one check: a config value is valid from here on

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a mapping, rejecting unknown keys (with close matches) and, on construction, wrong types with
        the key's name."""
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
                raise ValueError(f"unknown config key {key!r}{hint}")
        return cls(**dict(values))

    def validate(self) -> None:
        """Types, names and ranges, checked before any data or model is loaded (on construction)."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
        self.task  # noqa: B018 - parsed here, so a bad task_name fails on construction
        check_parameters(self.context_strategy_name, self.context_p_keep, self.max_contexts,
                         self.approximate_context_sampling_method)
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if self.icrl_flip_feedback:
            if self.icrl_flip_feedback_prob is None:
                raise ValueError("icrl_flip_feedback_prob: required in [0, 1] when icrl_flip_feedback is on")
            _range("icrl_flip_feedback_prob", self.icrl_flip_feedback_prob, 0.0, 1.0)
        for name, low in (("train_k", 1), ("test_every", 1), ("log_every", 1), ("exemplars_per_label", 0),
                          ("debug_k", 0), ("max_context_examples", 0), ("test_k", 1), ("max_window_tokens", 1),
                          ("batch_size", 1), ("server_concurrency", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name}: must be >= {low}, got {value}")
        for name in ("seed", "training_seed", "test_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ValueError(f"device: got {self.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
        entry = self.backend_entry
        if entry.in_process:
            for name in ("server_url", "server_model", "api_key_env", "server_concurrency"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only for a server backend (backend: {' | '.join(SERVER_BACKENDS)})"
                                     f"; backend is {self.backend}")
        elif entry.chat and self.server_model is None:
            raise ValueError(f"server_model: backend {self.backend} needs the hosted model's id, e.g. "
                             "gemini-1.5-flash-8b or gpt-4o-mini")
        elif entry.chat and self.max_context_examples is None:
            raise ValueError(f"max_context_examples: backend {self.backend} sends messages that the server "
                             "tokenizes, so how many episodes fit its window cannot be counted here; set it")
        if not entry.in_process and not (self.server_url or "").startswith(("http://", "https://")):
            raise ValueError(f"server_url: backend {self.backend} needs the server's address, e.g. "
                             f"http://127.0.0.1:8080; got {self.server_url!r}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout: must be > 0 seconds, got {self.request_timeout}")
        if self.yarn_factor is not None and self.yarn_factor <= 1:
            raise ValueError(f"yarn_factor: must be > 1 (e.g. 4.0 for Qwen2.5 at 128K tokens), got {self.yarn_factor}")
        if self.yarn_factor is not None and not entry.in_process:
            raise ValueError("yarn_factor: applies to the local backend; a server scales positions itself (vLLM: "
                             "--hf-overrides with rope_scaling; llama.cpp: --rope-scaling yarn --rope-scale 4)")
        if self.request_retries < 0:
            raise ValueError(f"request_retries: must be >= 0, got {self.request_retries}")
        if self.dtype not in DTYPES:
            raise UserError(f"dtype: got {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.dtype != "auto" and not entry.in_process:
            raise UserError(f"dtype: applies to the local backend; backend {self.backend}'s numerics are the server's "
                            "(set them where the server is started), so leave dtype at auto")

    def to_dict(self, secrets: bool = False) -> dict[str, Any]:
        """Plain dict of the fields; ``hf_token`` only with ``secrets=True``."""
        out = asdict(self)
        if not secrets:
            out.pop("hf_token")
        return out

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine the experiment's results."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}

    @property
    def zero_shot(self) -> bool:
        """``max_context_examples: 0``: one test step on an empty context (the paper's step 0)."""
        return self.max_context_examples == 0

    @functools.cached_property
    def task(self) -> TaskName:
        """``task_name`` parsed (its task file read): the one parse, which the plan and the run folder's name use."""
        return parse_task_name(self.task_name)

    @functools.cached_property
    def backend_entry(self) -> Backend:
        """The registry entry of ``backend`` (:mod:`icrl_lib.serving.backends`), refused when it samples
        approximately without ``allow_approximate``."""
        return check_backend(self.backend, self.allow_approximate)

    @property
    def model_id(self) -> str:
        """The model the run is of: ``server_model`` on a hosted chat backend (model_name is not used there),
        else ``model_name``."""
        return self.server_model if self.backend_entry.chat else self.model_name

    @property
    def model_tag(self) -> str:
        """The model as runs and tables name it: ``model_id``, followed by ``@backend`` where a server ran it (so a
        server's runs are never averaged with another backend's). The one rule, for run folders and tables."""
        return self.model_id if self.backend_entry.in_process else f"{self.model_id}@{self.backend}"

    def identity(self) -> dict[str, Any]:
        """The result fields that this experiment actually uses: they name and check its run folder.

        Fields without effect are left out, so that one experiment never lands in two folders: the backend when it
        is local, ``train_k`` (a
        larger one extends the run), ``yarn_factor`` when unset and ``dtype`` at ``auto`` (runs made before these
        options existed keep their folders), everything about training for zero-shot, the approximate-only fields for
        other strategies, the flip probability without flipping, feedback options for ICL, the window cap when
        ``max_context_examples`` is set.
        """
        unused = set(EXTENDABLE_FIELDS)
        if self.backend_entry.in_process:  # local runs keep the folder names they had before server backends existed
            unused |= {"backend", "server_model"}
        elif self.backend_entry.chat:  # the server's own template and tokenizer: model_name has no effect
            unused.add("model_name")
        if self.yarn_factor is None:  # likewise before the option existed
            unused.add("yarn_factor")
        if self.dtype == "auto":  # likewise: runs of the device's own choice keep their names
            unused.add("dtype")
        if not self.context_strategy_name.startswith("approximate"):
            unused |= {"max_contexts", "approximate_context_sampling_method"}
        if not self.icrl_flip_feedback:
            unused.add("icrl_flip_feedback_prob")
        if not self.icrl:
            unused |= {"icrl_omit_feedback", "icrl_flip_feedback", "icrl_flip_feedback_prob"}
        if self.max_context_examples is not None:
            unused.add("max_window_tokens")
        if self.zero_shot:
            unused |= {"context_strategy_name", "context_p_keep", "max_contexts", "approximate_context_sampling_method",
                       "test_every", "training_seed", "exemplars_per_label", "icrl_omit_feedback",
                       "icrl_flip_feedback", "icrl_flip_feedback_prob"}
        return {k: v for k, v in self.result_fields().items() if k not in unused}


FIELD_HELP: Mapping[str, str] = types.MappingProxyType({f.name: f.metadata["help"] for f in fields(ExperimentConfig)})


@functools.lru_cache(maxsize=1)
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(ExperimentConfig)


def _allowed_types(annotation: Any) -> tuple[Any, ...]:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def _check_type(key: str, value: Any, annotation: Any) -> None:
    allowed = _allowed_types(annotation)
    if float in allowed and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: must be a finite number, got {value!r}")
    for t in allowed:
        if t is type(None) and value is None:
            return
        if t is bool and isinstance(value, bool):
            return
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if t is str and isinstance(value, str):
            return
    names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
    raise ValueError(f"{key}: expected {names}, got {value!r} ({type(value).__name__})")


def _range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}: must be in [{low:g}, {high:g}], got {value}")


def load_config(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    """Config from a YAML file, a mapping or nothing (defaults), then ``overrides``; strict keys and types."""
    values: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        values.update(read_yaml_mapping(source))
        try:
            return ExperimentConfig.from_dict({**values, **overrides})
        except ValueError as err:
            raise UserError(f"{source}: {err}") from None
    elif source is not None:
        values.update(source)
    values.update(overrides)
    return ExperimentConfig.from_dict(values)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file holding one mapping (``{}`` for an empty file); errors name the file (and line)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise os_error("reading", path, err) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of parameter names to values, got {type(data).__name__}")
    return data


def build_parser() -> argparse.ArgumentParser:
    """argparse parser with every field as ``--name`` (bools as ``--name/--no-name``), the paper's flags verbatim."""
    parser = argparse.ArgumentParser(prog="icrl run", description="Run one ICRL/ICL experiment (the paper's flags).",
                                     argument_default=argparse.SUPPRESS)
    hints = _field_types()
    for f in fields(ExperimentConfig):
        kinds = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        kind = kinds[0]
        default = CLI_DEFAULTS.get(f.name, f.default)
        help_ = f"{f.metadata['help']} (default: {default})".replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_)
        else:
            parser.add_argument(f"--{f.name}", type=_parse_optional(kind), help=help_, metavar=kind.__name__.upper())
    return parser


def _parse_optional(kind: type):
    def parse(text: str):
        if text in ("None", "null"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def with_paths_resolved(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with a relative ``output_dir`` / ``data_dir`` resolved against the checkout: the one rule of every
    entry point (``icrl run``, ``icrl check``, notebooks, sweeps, families), so ``outputs`` is one folder whichever
    folder a command starts in (outside a checkout: the current folder). Not validated again: ``validate`` checks
    neither path, so the copy keeps the checked value (and its parsed task)."""
    resolved = copy.copy(config)
    object.__setattr__(resolved, "output_dir", str(resolve_path(config.output_dir)))
    object.__setattr__(resolved, "data_dir", data_dir_param(config.data_dir))
    return resolved


def config_from_argv(argv: list[str]) -> ExperimentConfig:
    """Config from command-line flags; a flag left out keeps its default (omitted ``--test_k``: whole test split,
    as the paper's parser, whose default was None)."""
    args = vars(build_parser().parse_args(argv))
    return with_paths_resolved(load_config({**CLI_DEFAULTS, **args}))

