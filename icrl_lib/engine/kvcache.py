"""Reusing the context's KV cache: packed forwards on a cached prefix, and a pool of prefix caches.

Every ICRL step re-reads a long context (system prompt + episodes) and then a short query. We encode the context
once, keep its KV cache, and run every query on top of it. Many queries (the test set) go into ONE row after the
cached prefix, each attending to the prefix and to its own tokens only: cascade attention
(:mod:`icrl_lib.engine.cascade`), or a block-diagonal 4D attention mask where the model does not run SDPA; explicit
position ids. Measured on the embedded model this beats per-query cache copies ~3x and batched copies 4-6x
(../shared/notes/embedded-model.md). Tokens appended for the queries are cropped off afterwards, so the
cached prefix is never changed by them.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from icrl_lib.engine.cascade import enable_cascade, plan_cascade
from icrl_lib.engine.models import LanguageModel
from icrl_lib.engine.split_tokens import common_prefix_length

_NO_MASK = torch.zeros(1, 1, 1, 1)  # a 4D mask is passed through untouched: no causal mask is built for the cascade
PREFILL_CHUNK = 2048  # tokens per forward when extending a prefix; bounds the attention scratch memory


@dataclass
class PackedRow:
    """Tokens appended after a cached prefix, each owned by one branch (query); tracks positions per branch."""

    prefix_len: int
    owners: list[int] = field(default_factory=list)  # owner of every appended cache position
    lengths: dict[int, int] = field(default_factory=dict)  # tokens appended so far per owner
    cascade: bool = True  # cascade attention (engine.cascade) where the model runs SDPA; False: the masked row

    def forward(self, lm: LanguageModel, cache, tokens: Sequence[int], owners: Sequence[int],
                keep: Sequence[int]) -> torch.Tensor:
        """Append ``tokens`` (owner per token) to ``cache``; return float32 logits at positions ``keep``.

        A new token attends to the whole prefix, to earlier appended tokens of its owner, and to itself and the
        earlier new tokens of its owner. Position ids continue each owner's own sequence after the prefix.
        """
        device = lm.model.device
        positions = []
        for o in owners:
            n = self.lengths.get(o, 0)
            positions.append(self.prefix_len + n)
            self.lengths[o] = n + 1
        if self.cascade and enable_cascade(lm.model):
            # No mask at all: each layer attends to the prefix and to each query's own tokens apart (engine.cascade).
            extra = {"attention_mask": _NO_MASK, "cascade": plan_cascade(self.prefix_len, self.owners, owners, device)}
        else:
            extra = {"attention_mask": self._mask(lm, owners, device)}
        with torch.inference_mode():
            out = lm.model(
                input_ids=torch.tensor([list(tokens)], device=device),
                position_ids=torch.tensor([positions], device=device),
                use_cache=True,
                logits_to_keep=torch.tensor(list(keep), device=device),
                **extra,
                **{lm.cache_arg: cache},
            )
        self.owners.extend(owners)
        return out.logits[0].float()

    def _mask(self, lm: LanguageModel, owners: Sequence[int], device) -> torch.Tensor:
        """The block-diagonal mask of the whole row (the reference the cascade is tested against)."""
        new_owner = torch.tensor(owners, dtype=torch.long, device=device)
        past_owner = torch.tensor(self.owners, dtype=torch.long, device=device)
        q = len(owners)
        order = torch.arange(q, device=device)  # the mask is built where the model runs
        mask = torch.cat(
            [
                torch.ones(q, self.prefix_len, dtype=torch.bool, device=device),
                past_owner[None, :] == new_owner[:, None],
                (new_owner[None, :] == new_owner[:, None]) & (order[None, :] <= order[:, None]),
            ],
            dim=1,
        )
        # Additive float mask (0 = attend, dtype min = masked): the same logits as a boolean mask, which SDPA would
        # convert in every layer (measured 8% slower on CPU).
        dtype = lm.model.dtype
        additive = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
        return additive[None, None]

    def release(self, cache) -> None:
        """Crop every appended token off ``cache``, restoring the prefix exactly."""
        if self.owners:
            cache.crop(-len(self.owners))  # negative form: works in transformers 4.x and 5.x
        self.owners.clear()
        self.lengths.clear()


def extend_cache(lm: LanguageModel, cache, ids: Sequence[int]) -> torch.Tensor | None:
    """Run ``ids`` causally after whatever ``cache`` holds; return the last position's logits (None if no ids)."""
    logits = None
    for start in range(0, len(ids), PREFILL_CHUNK):
        chunk = list(ids[start:start + PREFILL_CHUNK])
        with torch.inference_mode():
            out = lm.model(
                input_ids=torch.tensor([chunk], device=lm.model.device),
                use_cache=True,
                logits_to_keep=1,  # full-vocab logits for every prefix position would cost ~400 MB per 2k tokens
                **{lm.cache_arg: cache},
            )
        logits = out.logits[0, -1].float()
    return logits


def new_cache(lm: LanguageModel):
    """An empty DynamicCache for ``lm``."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=lm.model.config)
    except TypeError:  # transformers 4.x takes no config
        return DynamicCache()


@dataclass
class CacheEntry:
    """A KV cache holding exactly ``ids``, plus the logits after its last token."""

    ids: list[int]
    cache: object
    last_logits: torch.Tensor | None
    last_used: int = 0


@dataclass
class PoolStats:
    """What the pool did, for the run's tables and the benchmarks."""

    hits: int = 0  # acquisitions that reused some cached tokens
    reused_tokens: int = 0
    computed_tokens: int = 0
    evictions: int = 0


class PrefixCachePool:
    """Keeps KV caches of recent prefixes and serves a new prefix from the one sharing the most tokens.

    Approximate ICRL grows K contexts: each context's cache is extended by its new episode instead of being
    re-encoded. Explorative ICRL changes its context every step, but prompts still share a prefix (system prompt,
    early episodes) with a recent cache. Memory is bounded by ``budget_tokens`` over all entries and by
    ``max_entries``; the least recently used entry is evicted (its tokens will simply be recomputed if needed).
    """

    def __init__(self, lm: LanguageModel, budget_tokens: int, max_entries: int = 9):
        self.lm = lm
        self.budget_tokens = max(1, budget_tokens)
        self.max_entries = max(1, max_entries)
        self.entries: list[CacheEntry] = []
        self.stats = PoolStats()
        self._clock = 0
        self._evictions_reported = 0

    def settings(self) -> dict[str, int]:
        """The pool's limits, as a run's meta.json records them."""
        return {"budget_tokens": self.budget_tokens, "max_entries": self.max_entries,
                "bytes_per_token": self.lm.kv_bytes_per_token}

    def report(self) -> dict[str, int]:
        """KV cache held now (entries, tokens) and evictions since the last report (each means recomputation)."""
        evictions, self._evictions_reported = self.stats.evictions - self._evictions_reported, self.stats.evictions
        return {"entries": len(self.entries), "tokens": sum(len(e.ids) for e in self.entries), "evictions": evictions}

    def acquire(self, prefix: Sequence[int]) -> CacheEntry:
        """An entry whose cache holds exactly ``prefix``; computes only the tokens no entry already holds."""
        prefix = list(prefix)
        self._clock += 1
        best, lcp = None, 0
        for entry in self.entries:
            n = common_prefix_length(entry.ids, prefix)
            if n > lcp:
                best, lcp = entry, n
        if best is not None and 4 * (len(best.ids) - lcp) <= len(best.ids):
            # The prefix extends this cache, or drops only its last few tokens (a test step cached the context plus
            # the queries' common opening): grow or crop it in place rather than keeping a stale copy.
            entry = best
        else:
            self._make_room(len(prefix), keep=best)
            if best is not None and best in self.entries and (len(self.entries) < self.max_entries):
                entry = CacheEntry(ids=list(best.ids), cache=copy.deepcopy(best.cache), last_logits=best.last_logits)
                self.entries.append(entry)
            elif best is not None:  # no room for a copy: reuse the best entry itself
                entry = best
            else:
                entry = CacheEntry(ids=[], cache=new_cache(self.lm), last_logits=None)
                self.entries.append(entry)
        if len(entry.ids) > lcp:
            entry.cache.crop(-(len(entry.ids) - lcp))
            entry.ids, entry.last_logits = entry.ids[:lcp], None
        todo = prefix[len(entry.ids):]
        if lcp:
            self.stats.hits += 1
            self.stats.reused_tokens += lcp
        if todo:
            entry.last_logits = extend_cache(self.lm, entry.cache, todo)
            entry.ids.extend(todo)
            self.stats.computed_tokens += len(todo)
        entry.last_used = self._clock
        self._trim_budget(keep=entry)
        return entry

    def _make_room(self, incoming: int, keep: CacheEntry | None) -> None:
        """Evict least recently used entries (never ``keep``) until a new entry fits."""
        while self.entries and (
            len(self.entries) >= self.max_entries
            or sum(len(e.ids) for e in self.entries) + incoming > self.budget_tokens
        ):
            victims = [e for e in self.entries if e is not keep]
            if not victims:
                return
            victim = min(victims, key=lambda e: e.last_used)
            self.entries.remove(victim)
            self.stats.evictions += 1

    def _trim_budget(self, keep: CacheEntry) -> None:
        while sum(len(e.ids) for e in self.entries) > self.budget_tokens and len(self.entries) > 1:
            victim = min((e for e in self.entries if e is not keep), key=lambda e: e.last_used)
            self.entries.remove(victim)
            self.stats.evictions += 1



def free_memory_bytes(lm: LanguageModel) -> int:
    """Memory the next forwards may use: free GPU memory on CUDA, else available RAM (Linux), else 4 GiB."""
    if lm.device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(lm.device))[0])
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 * 2**30


def packed_token_budget(lm: LanguageModel, prefix_len: int) -> int:
    """Query tokens per packed forward on a cached prefix of ``prefix_len`` tokens (``batch_size`` overrides it).

    The masked row (models not on SDPA) computes attention scores for all Q x (prefix + Q) pairs although each query
    needs only its own block, a waste of Q / (prefix + Q); cascade attention wastes nothing, but the same sizes serve
    it: Q is half the prefix, within [512, 2048] tokens on CPU (measured on the masked row: throughput flat from 500 to
    1,000 query tokens on a 2k prefix, -20% at 2k) and [2048, 16384] on GPU, where larger matmuls keep it busy. It is
    then capped so the fp32 scores of one layer (heads x Q x (prefix + Q) x 4 bytes) take at most a quarter of free
    memory.
    """
    low, high = (2048, 16384) if lm.device.startswith("cuda") else (512, 2048)
    q = max(low, min(high, prefix_len // 2))
    cfg = getattr(lm.model.config, "text_config", lm.model.config)
    budget = free_memory_bytes(lm) // 4
    while q > 64 and cfg.num_attention_heads * q * (prefix_len + q) * 4 > budget:
        q //= 2
    return q


def default_cache_budget(lm: LanguageModel) -> int:
    """Tokens of KV cache the pool may keep: 25% of free GPU memory, or 3 GiB of RAM on CPU."""
    per_token = lm.kv_bytes_per_token
    if lm.device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return int(0.25 * free // per_token)
    return int(3 * 2**30 // per_token)
