"""Exact sampling on a llama.cpp server (or llama-cpp-python's): a grammar whose terminals are token ids.

The grammar admits exactly the canonical token sequences of the labels (the trie's), not every tokenization that
spells a label, so at every step the server's grammar sampler leaves exactly the trie node's children. The end of
a label is llama.cpp's end-of-generation rule: allowed only where some label is complete. Every end-of-generation
token other than the model's end-of-turn is banned by a logit bias, so where one label is a prefix of another
(CLINIC150's ``order`` / ``order status``) the choice is between end-of-turn and the continuation, as in the trie.
The request switches off every other sampler (top-k, top-p, min-p, typical, penalties, mirostat), so the server
draws from softmax(z[children] / T). Its draws come from its own generator, seeded per query from
(seed + step, stream, query index): the law is exact and reruns reproduce, but the label log-probability is not
returned (recorded as unknown).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.sampled import ServerSampledPredictor
from icrl_lib.tasks.trie import LabelTrie

NEUTRAL_SAMPLING: dict[str, Any] = {  # llama-cpp-python's defaults are top_k 40, top_p 0.95, min_p 0.05
    "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "mirostat_mode": 0, "stream": False}
BANNED = -1e9  # added to a banned token's logit: exp() of it is exactly 0 in float32


def token_grammar(trie: LabelTrie) -> str:
    """GBNF that matches the labels' token sequences without their end-of-turn (``<[id]>`` terminals)."""
    alternatives = sorted({" ".join(f"<[{t}]>" for t in seq[:-1]) for seq in trie.sequences})
    return "root ::= " + " | ".join(f"( {a} )" for a in alternatives)


def string_grammar(labels) -> str:
    """GBNF that matches the labels as strings (`` <label>``): any tokenization that spells one is allowed. This is
    the approximate route (``llamacpp-choice``), what a server's guided choice does."""
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "root ::= " + " | ".join(quoted(" " + label) for label in labels)


class GrammarPredictor(ServerSampledPredictor):
    """Label prediction on a llama.cpp server with a token-id grammar (the server samples). Requests go one after
    another: the server's prefix cache keeps the shared context of the previous request, so each query computes only
    its own tokens. llama-cpp-python reports no cache counters: tokens computed are unknown."""

    unlabelled_hint = ": does the server support token-id grammars (llama.cpp 2025 or later)?"
    spaced = True

    def __init__(self, client: ServerClient, model: str, encode_batch, trie: LabelTrie, temperature: float,
                 banned: Sequence[int], exact: bool = True):
        super().__init__(client, model, trie.labels, temperature, encode_batch)
        self.grammar = token_grammar(trie) if exact else string_grammar(trie.labels)
        # A label spelled by other tokens may be longer: room for one token per character, then the end.
        self.max_tokens = max(len(s) for s in trie.sequences) if exact else max(len(x) for x in trie.labels) + 2
        self.bias = {str(t): BANNED for t in banned}

    def request(self, prompt: str, seed: int) -> dict[str, Any]:
        """The body of one ``/v1/completions`` request."""
        return {"model": self.model, "prompt": prompt, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "seed": seed, "grammar": self.grammar, "logit_bias": self.bias, **NEUTRAL_SAMPLING}

    def text(self, answer: dict[str, Any]) -> str | None:
        choice = answer["choices"][0]
        return choice["text"] if choice.get("finish_reason") == "stop" else None

    def usage(self, answer: dict[str, Any]) -> tuple[int | None, int | None, int]:
        return None, None, int((answer.get("usage") or {}).get("completion_tokens") or 0)
