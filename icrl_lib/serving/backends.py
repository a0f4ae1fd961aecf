"""Where a run's model runs: the registry of backends (adding one is adding an entry) and what each route keeps exact.

The label trie, the prompt rendered with the model's own tokenizer and chat template, and the per-query random
numbers always stay on the client; a backend only says how the constrained distribution softmax(z[children] / T)
is sampled. ``model_name`` still names the tokenizer and chat template (loaded without weights for a server
backend); the start-up probe checks that the server tokenizes a rendered prompt exactly as that tokenizer does.
"""
from __future__ import annotations

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
    needs: str = ""  # what the server must be started with for this route
    tested_here: bool = False  # exercised against a real server by this project's tests
    chat: bool = False  # the server applies its model's chat template to messages; model_name is not used


BACKENDS: Mapping[str, Backend] = MappingProxyType({b.name: b for b in (
    Backend("local", "transformers in this process", "trie walk on the model's logits", exact=True, logprobs=True,
            tested_here=True),
    Backend("llamacpp", "llama.cpp server or llama-cpp-python[server]",
            "GBNF grammar of token ids, only the temperature sampler, other end-of-generation tokens banned, "
            "a seed per query (server-side sampling)", exact=True, logprobs=False,
            needs="a context as long as the run's window (--n_ctx / -c)", tested_here=True),
    Backend("llamacpp-choice", "llama.cpp server or llama-cpp-python[server]",
            "APPROXIMATE: GBNF grammar of the label strings (every tokenization that spells a label is allowed), "
            "server-side sampling", exact=False, logprobs=False, needs="as llamacpp", tested_here=True),
    Backend("vllm", "vLLM (OpenAI-compatible server)",
            "log-probabilities of a trie node's children (allowed_token_ids), sampled on the client",
            exact=True, logprobs=True, needs="--logprobs-mode processed_logprobs; --enable-prefix-caching"),
    Backend("sglang", "SGLang (native /generate)",
            "log-probabilities of a trie node's children (token_ids_logprob), all queries of a level in one "
            "request, sampled on the client", exact=True, logprobs=True,
            needs="nothing beyond the defaults (RadixAttention caches the shared context)"),
    Backend("vllm-choice", "vLLM (OpenAI-compatible server)",
            "APPROXIMATE: guided choice among the label strings (structured_outputs), server-side sampling",
            exact=False, logprobs=False, needs="vLLM 0.11 or later; --enable-prefix-caching"),
    Backend("sglang-choice", "SGLang (native /generate)",
            "APPROXIMATE: a regex of the label strings, server-side sampling (no per-query seed)",
            exact=False, logprobs=False),
    Backend("openai-enum", "an OpenAI-compatible chat endpoint (hosted or self-hosted)",
            "APPROXIMATE: chat messages, the server's chat template, a JSON schema with the labels as an enum",
            exact=False, logprobs=False, needs="structured outputs (response_format json_schema)",
            tested_here=True, chat=True),
    Backend("gemini-enum", "the Gemini API (generativelanguage.googleapis.com)",
            "APPROXIMATE: chat contents, Gemini's chat template, responseMimeType text/x.enum with the labels",
            exact=False, logprobs=False, needs="an API key (api_key_env, sent as x-goog-api-key)", chat=True),
)})

SERVER_BACKENDS = tuple(name for name in BACKENDS if name != "local")


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
