"""Cascade attention for a packed row: no attention work is spent on masked-out pairs.

A packed row appends many queries after one cached prefix; each query token must see the whole prefix and its own
query's tokens, nothing else. The block-diagonal mask of :class:`~icrl_lib.engine.kvcache.PackedRow` gets that by
computing every query token against every token of the row and masking most of them out (with 1,024 query tokens on
a 2,048-token prefix, a third of the attention work). Here the two parts are computed apart and merged exactly:

- the prefix: one dense attention of all query tokens over the prefix, no mask (grouped-query heads share their key
  and value heads without copies), returning each row's log-sum-exp;
- each query's own tokens: small causal blocks, one per query, batched (tokens appended by earlier forwards of the
  same query are keys too);
- the merge: ``out = w * out_prefix + (1 - w) * out_own`` with ``w = sigmoid(lse_prefix - lse_own)``, which is the
  softmax over the union of the two key sets.

It runs as a transformers attention implementation (``icrl_cascade``), which delegates every ordinary forward (no
``cascade`` plan) to SDPA, so the model computes exactly as before everywhere else.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

NAME = "icrl_cascade"


@dataclass(frozen=True)
class CascadePlan:
    """Index tensors of one packed forward (computed once, used by every layer)."""

    prefix_len: int
    q_index: torch.Tensor  # [G, Lq] each group's (query's) new tokens, as positions among the new tokens (padded)
    k_index: torch.Tensor  # [G, Lk] each group's own keys, as positions after the prefix (padded)
    mask: torch.Tensor  # [G, Lq, Lk] True where a new token attends to an own key (padding rows: one dummy key)
    valid: torch.Tensor  # [G, Lq] True for real (not padding) new tokens
    positions: torch.Tensor  # [Q] where each valid (group, token) pair goes among the new tokens, in valid order


def plan_cascade(prefix_len: int, past_owners: Sequence[int], new_owners: Sequence[int],
                 device: torch.device | str) -> CascadePlan:
    """The plan for new tokens owned by ``new_owners`` after ``past_owners`` (tokens earlier forwards appended)."""
    past: dict[int, list[int]] = {}
    for j, o in enumerate(past_owners):
        past.setdefault(o, []).append(j)
    new: dict[int, list[int]] = {}
    for i, o in enumerate(new_owners):
        new.setdefault(o, []).append(i)
    groups = list(new)
    lq = max(len(new[o]) for o in groups)
    lk = max(len(past.get(o, ())) + len(new[o]) for o in groups)
    a = len(past_owners)
    q_index = torch.zeros(len(groups), lq, dtype=torch.long)
    k_index = torch.zeros(len(groups), lk, dtype=torch.long)
    mask = torch.zeros(len(groups), lq, lk, dtype=torch.bool)
    valid = torch.zeros(len(groups), lq, dtype=torch.bool)
    for g, o in enumerate(groups):
        mine, before = new[o], past.get(o, [])
        n, m = len(mine), len(before)
        q_index[g, :n] = torch.tensor(mine)
        k_index[g, :m + n] = torch.tensor(before + [a + i for i in mine])
        valid[g, :n] = True
        mask[g, :n, :m] = True  # everything this query appended before
        mask[g, :n, m:m + n] = torch.ones(n, n, dtype=torch.bool).tril()  # its new tokens, causally
        mask[g, n:, 0] = True  # padding rows: one key, so their (discarded) softmax stays finite
    positions = q_index[valid]
    return CascadePlan(prefix_len, q_index.to(device), k_index.to(device), mask.to(device), valid.to(device),
                       positions.to(device))


def attend_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention of ``q`` [B, H, L, D] over ``k``, ``v`` [B, H, S, D]: (output [B, H, L, D], log-sum-exp
    [B, H, L] of the scaled scores), by the fused kernels where torch has them."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        return out, lse
    if q.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                          scale=scale)[:2]
        return out, lse[..., :q.shape[2]]
    scores = (q @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32)) * scale  # other devices
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.softmax(scores, dim=-1).to(v.dtype) @ v), lse


def cascade_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    cascade: CascadePlan | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """The ``icrl_cascade`` attention implementation: cascade attention for a packed forward (``cascade`` given),
    transformers' SDPA otherwise. Returns [B, L, H, D] as every transformers attention implementation does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cascade is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, h, q_len, d = query.shape
    kv_heads = key.shape[1]
    rep = h // kv_heads
    scale = scaling if scaling is not None else d ** -0.5
    p = cascade.prefix_len
    if p:  # the prefix: query heads of one key/value head stacked as rows (no copies of the keys and values)
        grouped = query.reshape(b, kv_heads, rep * q_len, d)
        out_p, lse_p = attend_with_lse(grouped, key[:, :, :p], value[:, :, :p], scale)
        out_p, lse_p = out_p.reshape(b, h, q_len, d), lse_p.reshape(b, h, q_len)
    else:  # nothing shared: the softmax is the own part's alone (an empty set's log-sum-exp is -inf)
        out_p = torch.zeros_like(query)
        lse_p = torch.full((b, h, q_len), float("-inf"), dtype=torch.float32, device=query.device)
    # Each query's own tokens: [B, KV, rep, G, Lq, D] against [B, KV, G, Lk, D].
    q_own = query.reshape(b, kv_heads, rep, q_len, d)[:, :, :, cascade.q_index]
    k_own, v_own = key[:, :, p:][:, :, cascade.k_index], value[:, :, p:][:, :, cascade.k_index]
    acc = torch.promote_types(query.dtype, torch.float32)  # softmax statistics in float32 at least
    scores = torch.einsum("bkrgqd,bkgld->bkrgql", q_own, k_own).to(acc) * scale
    scores = scores.masked_fill(~cascade.mask, float("-inf"))
    lse_o = torch.logsumexp(scores, dim=-1)
    out_o = torch.einsum("bkrgql,bkgld->bkrgqd", torch.softmax(scores, dim=-1).to(value.dtype), v_own)
    # Back to token order: the valid (group, token) pairs cover every new token exactly once.
    own = torch.empty_like(out_p)
    own_lse = torch.empty_like(lse_p)
    own[:, :, cascade.positions] = out_o.reshape(b, h, *out_o.shape[3:])[:, :, cascade.valid]
    own_lse[:, :, cascade.positions] = lse_o.reshape(b, h, *lse_o.shape[3:])[:, :, cascade.valid].to(lse_p.dtype)
    w = torch.sigmoid(lse_p.to(acc) - own_lse.to(acc)).to(out_p.dtype)[..., None]
    out = w * out_p + (1 - w) * own
    return out.transpose(1, 2).contiguous(), None


def enable_cascade(model: torch.nn.Module) -> bool:
    """Switch ``model`` from SDPA to ``icrl_cascade`` (same results for every ordinary forward); False, leaving it
    unchanged, when it uses another attention implementation (eager, flash-attention) or transformers lacks the
    attention registry."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return False
    config = model.config
    if config._attn_implementation == NAME:
        return True
    if config._attn_implementation != "sdpa" or getattr(config, "sub_configs", None):
        return False
    AttentionInterface.register(NAME, cascade_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config._attn_implementation = NAME
    return True
