"""Tokenizing a test set without tokenizing its shared context once per query.

Every prompt of a test step is the same context followed by one query. A tokenizer splits its input at special
tokens before any normalisation or BPE merge, so no merge crosses a special token: the token ids of a prompt are the
ids of its text up to the last special token inside the shared part, followed by the ids of the rest. We tokenize
that head once and only each query's tail. One check keeps it exact: the first prompt, tokenized whole, must equal
head + tail (every tail begins with the same text, so whatever the tokenizer does at the start of a segment, such
as SentencePiece's leading-space marker, it does to all of them alike); otherwise every prompt is tokenized whole.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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


def split_point(prompts: Sequence[str], specials: Sequence[str]) -> int:
    """Characters of the shared head: the end of the last special token within the prompts' common prefix, with at
    least one character of each prompt after it (0: no such token)."""
    common = os.path.commonprefix(list(prompts))
    common = common[:min(len(p) for p in prompts) - 1]
    return max((common.rfind(s) + len(s) for s in specials if common.rfind(s) >= 0), default=0)


def encode_shared(tokenizer: Any, prompts: Sequence[str], specials: Sequence[str] | None = None) -> SharedIds:
    """The token ids of ``prompts`` (no special tokens added), tokenizing their shared head once when exact."""
    def encode(texts: Sequence[str]) -> list[list[int]]:
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    cut = split_point(prompts, specials if specials is not None else special_strings(tokenizer)) if len(
        prompts) > 1 else 0
    if cut:
        head = encode([prompts[0][:cut]])[0]
        tails = encode([p[cut:] for p in prompts])
        if head + tails[0] == encode([prompts[0]])[0]:
            return SharedIds(head, tails, True)
    return SharedIds([], encode(prompts), False)
