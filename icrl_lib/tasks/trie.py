"""A task's labels as token sequences under a tokenizer: the trie of allowed next tokens that constrained decoding
walks (the paper's label-by-label sampling), built once per run and used to check that labels tokenize apart."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class LabelTrie:
    """Token sequences of `` <label>`` + end-of-turn for every label, as a trie of allowed next tokens."""

    labels: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    children: Mapping[tuple[int, ...], tuple[int, ...]]  # node (tokens so far) -> sorted allowed next tokens
    leaves: Mapping[tuple[int, ...], int]  # complete sequence -> label index

    @classmethod
    def build(cls, labels: Sequence[str], encode: Callable[[str], list[int]], eot_id: int) -> LabelTrie:
        """Tokenize `` label`` (leading space, as the model writes it after the prefix) and add the end-of-turn."""
        sequences = tuple(tuple(encode(" " + label)) + (eot_id,) for label in labels)
        leaves: dict[tuple[int, ...], int] = {}
        children: dict[tuple[int, ...], set[int]] = {}
        for index, seq in enumerate(sequences):
            if seq in leaves:
                raise ValueError(f"labels {labels[leaves[seq]]!r} and {labels[index]!r} tokenize identically")
            leaves[seq] = index
            for depth in range(len(seq)):
                children.setdefault(seq[:depth], set()).add(seq[depth])
        frozen = {node: tuple(sorted(nxt)) for node, nxt in children.items()}
        return cls(tuple(labels), sequences, MappingProxyType(frozen), MappingProxyType(leaves))
