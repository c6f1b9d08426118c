"""Paged decode attention in plain jnp: the spec the kernels are tested against.

Takes one query token per sequence and the page pool its K/V live in; gives the attention
output per query head. It is also the engine's CPU path (jitted inside a scan over layers), so it
gathers each sequence's pages once, [B, M*S, K, D], instead of anything per token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common import (EXACT, MASK_VALUE, bf16_view, check_options, check_pages,
                                   default_scale)


def gather_pages(pages, block_tables, scales=None):
    """f32[B, M*S, K, D]: each row's pages in order, dequantized when scales are given."""
    rows, max_pages = block_tables.shape
    _, page_size, num_kv_heads, head_dim = pages.shape
    kv = bf16_view(jnp.asarray(pages)[block_tables]).astype(jnp.float32)   # [B, M, S, K, D]
    if scales is not None:
        kv = kv * jnp.asarray(scales)[block_tables][:, :, None, :, None]   # f32[B, M, 1, K, 1]
    return kv.reshape(rows, max_pages * page_size, num_kv_heads, head_dim)


def paged_decode_attention(
    q: jax.Array,             # [B, H, D]
    k_pages: jax.Array,       # [P, S, K, D]
    v_pages: jax.Array,       # [P, S, K, D]
    block_tables: jax.Array,  # i32[B, M]
    lengths: jax.Array,       # i32[B]
    *,
    scale: float | None = None,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    k_scales: jax.Array | None = None,  # f32[P, K]
    v_scales: jax.Array | None = None,  # f32[P, K]
) -> jax.Array:
    """Attention of one new token per sequence over its cached pages.

    Args:
      q: [B, H, D] the current token's queries. Query head h reads kv head h // (H // K).
      k_pages, v_pages: [P, S, K, D] the page pool (float, or int8 with k_scales/v_scales).
      block_tables: i32[B, M] page ids of each sequence in order; entries past its last page
        are never read into the result (they may point at pages full of NaN).
      lengths: i32[B] tokens cached per sequence, the current one included; 0 marks padding.
      scale: logit scale, 1/sqrt(D) by default.
      soft_cap: if set, logits become soft_cap * tanh(logits / soft_cap).
      sliding_window: if set, only the last `sliding_window` positions are attended.
      k_scales, v_scales: f32[P, K] dequantization scales per page and kv head, for int8 pages.

    Returns:
      [B, H, D] in q.dtype; rows with length 0 are zeros.
    """
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_options(soft_cap, sliding_window)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pages.shape[2]
    group = num_heads // num_kv_heads
    scale = default_scale(scale, head_dim)

    # Everything in f32: this is the spec, exactness beats speed here.
    k = gather_pages(k_pages, block_tables, k_scales)        # f32[B, C, K, D], C = M*S
    v = gather_pages(v_pages, block_tables, v_scales)        # f32[B, C, K, D]
    qg = q.astype(jnp.float32).reshape(batch, num_kv_heads, group, head_dim)
    logits = jnp.einsum("bkgd,bckd->bkgc", qg, k, preferred_element_type=jnp.float32,
                        precision=EXACT) * scale
    if soft_cap is not None:
        logits = soft_cap * jnp.tanh(logits / soft_cap)

    pos = jnp.arange(k.shape[1])                             # i32[C]
    lengths = lengths.astype(jnp.int32)[:, None]             # i32[B, 1]
    valid = pos[None, :] < lengths                           # bool[B, C]
    if sliding_window is not None:
        valid &= pos[None, :] >= lengths - sliding_window
    valid = valid[:, None, None, :]                          # bool[B, 1, 1, C]

    logits = jnp.where(valid, logits, MASK_VALUE)
    probs = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = jnp.where(valid, probs, 0.0)                     # NaN logits of unused pages -> 0
    denom = probs.sum(axis=-1, keepdims=True)                # f32[B, K, G, 1]
    v = jnp.where(valid[:, 0, 0, :, None, None], v, 0.0)     # 0 * NaN would still be NaN
    out = jnp.einsum("bkgc,bckd->bkgd", probs, v, preferred_element_type=jnp.float32,
                        precision=EXACT)
    out = jnp.where(denom > 0, out / jnp.where(denom > 0, denom, 1.0), 0.0)
    return out.reshape(batch, num_heads, head_dim).astype(q.dtype)
