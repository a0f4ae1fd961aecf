"""Tokenizing prompts without tokenizing their shared context again and again.

Every prompt of a test step is the same context followed by one query, and a training step's context is, for
approximate ICRL, the previous one with one episode more. A tokenizer splits its input at special tokens before any
normalisation or BPE merge, so no merge crosses a special token: the token ids of a text are the ids of its part up
to a special token followed by the ids of the rest. So the head of a prompt (up to the last special token that the
prompts, or the prompt and its context, share) is tokenized once, and a longer head is the ids of a cached head it
extends plus the ids of the new text. One check keeps it exact: a prompt tokenized whole must equal head + tail (the
tails begin with the same text, so whatever the tokenizer does at the start of a text, such as SentencePiece's
leading-space marker, it does to all of them alike) — on every test set, and on the first lone prompt; where it
fails, prompts are tokenized whole from then on.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def common_prefix_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix of two sequences (token ids, texts, message tuples).

    Chunks are compared (in C) rather than items one by one in Python, which took milliseconds per 16K-token prefix
    at every step: chunks doubling in size up to the first that differs, then a bisection inside it; the slices
    copy each item about twice in all."""
    if type(a) is not type(b):
        a, b = list(a), list(b)  # a list never equals a tuple
    n = min(len(a), len(b))
    lo, step = 0, 64
    while lo < n:
        hi = min(lo + step, n)
        if a[lo:hi] != b[lo:hi]:
            break
        lo, step = hi, 2 * step
    else:
        return n
    while hi - lo > 1:  # a[:lo] == b[:lo] and a[lo:hi] != b[lo:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class SharedIds:
    """Token ids of many prompts as one shared head and a tail per prompt (``head + tails[i]`` = prompt i's ids)."""

    head: list[int]
    tails: list[list[int]]
    split: bool  # True: the head was tokenized once; False: every prompt was tokenized whole (head is empty)

    def full(self) -> list[list[int]]:
        """Every prompt's whole token ids."""
        return [self.head + t for t in self.tails]

    @property
    def total(self) -> int:
        """Tokens in all the prompts together."""
        return len(self.head) * len(self.tails) + sum(len(t) for t in self.tails)


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts of the tokenizer's special tokens (those it splits its input at)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts = set(tokenizer.all_special_tokens) | {str(t) for t in added.values() if getattr(t, "special", False)}
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


def common_prefix_text(texts: Sequence[str]) -> int:
    """Length of the texts' common prefix (``os.path.commonprefix``'s, whose loop over characters in Python took
    milliseconds on a 16K-token context)."""
    if not texts:
        return 0
    return common_prefix_length(min(texts), max(texts))  # the common prefix of the smallest and the largest


def last_special_end(text: str, specials: Sequence[str], window: int = 4096) -> int:
    """End of the last special token in ``text`` (0: none). The text's tail is searched first: an occurrence found
    ending in its last ``window`` characters ends after any occurrence that begins before the searched tail."""
    longest = max((len(s) for s in specials), default=0)
    start = max(0, len(text) - window - longest)
    ends = [text.rfind(s, start) + len(s) for s in specials]
    best = max((e for e, s in zip(ends, specials) if e >= len(s)), default=0)
    if best > len(text) - window or start == 0:
        return best
    return max((text.rfind(s) + len(s) for s in specials if text.rfind(s) >= 0), default=0)


def split_point(texts: Sequence[str], specials: Sequence[str]) -> int:
    """Characters of the shared head: the end of the last special token within the texts' common prefix, with at
    least one character of each text after it (0: no such token)."""
    n = min(common_prefix_text(texts), min(len(t) for t in texts) - 1)
    return last_special_end(texts[0][:max(n, 0)], specials)


class PromptTokenizer:
    """Token ids of prompts with their heads tokenized incrementally (the last ``max_heads`` heads are kept)."""

    def __init__(self, tokenizer: Any, max_heads: int = 16):
        self.tokenizer, self.max_heads = tokenizer, max_heads
        self.specials = special_strings(tokenizer)
        self.heads: OrderedDict[str, list[int]] = OrderedDict()  # every key ends with a special token
        self.exact: bool | None = None  # None: not checked yet; False: the check failed, prompts go whole

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` tokenized whole (no special tokens added)."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def head_ids(self, head: str) -> list[int]:
        """Ids of ``head`` (which ends with a special token): a cached head it extends, then the new text."""
        if head in self.heads:
            self.heads.move_to_end(head)
            return self.heads[head]
        base = max((k for k in self.heads if head.startswith(k)), key=len, default="")
        ids = [*self.heads[base], *self.encode([head[len(base):]])[0]] if base else self.encode([head])[0]
        self.heads[head] = ids
        while len(self.heads) > self.max_heads:
            self.heads.popitem(last=False)
        return ids

    def shared(self, prompts: Sequence[str]) -> SharedIds:
        """The ids of a test set's ``prompts``: their shared head once, then each tail (checked on prompt 0)."""
        cut = split_point(prompts, self.specials) if len(prompts) > 1 and self.exact is not False else 0
        if cut:
            head = self.head_ids(prompts[0][:cut])
            tails = self.encode([p[cut:] for p in prompts])
            if self._check(prompts[0], head + tails[0], always=True):
                return SharedIds(head, tails, True)
        return SharedIds([], self.encode(prompts), False)

    def with_context(self, prompt: str, context: str) -> tuple[list[int], int]:
        """(ids of ``prompt``, how many of them the ids of ``context`` share): one training query's prompt."""
        cut = split_point([prompt, context], self.specials) if self.exact is not False else 0
        if cut:
            head = self.head_ids(prompt[:cut])
            tail, context_tail = self.encode([prompt[cut:], context[cut:]])
            ids = head + tail
            if self._check(prompt, ids, always=False):
                return ids, len(head) + common_prefix_length(tail, context_tail)
        ids, context_ids = self.encode([prompt, context])
        return ids, common_prefix_length(ids, context_ids)

    def _check(self, prompt: str, ids: list[int], always: bool) -> bool:
        if always or self.exact is None:
            self.exact = self.encode([prompt])[0] == ids
            if not self.exact:
                self.heads.clear()
        return bool(self.exact)
