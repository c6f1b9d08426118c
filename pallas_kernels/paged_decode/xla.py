"""Paged decode attention for XLA:CPU: the reference's math in cache-sized blocks of pages.

Same signature and result as reference.paged_decode_attention (the spec); see
pallas_kernels/blocked.py for why it is faster on a CPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.blocked import KV_BLOCK_TOKENS, windowed_attention
from pallas_kernels.common import check_options, check_pages, default_scale


def paged_decode_attention(q, k_pages, v_pages, block_tables, lengths, *, scale=None,
                           soft_cap=None, sliding_window=None, k_scales=None, v_scales=None,
                           kv_block_tokens: int = KV_BLOCK_TOKENS) -> jax.Array:
    """q: [B, H, D]; pages: [P, S, K, D]; block_tables: i32[B, M]; lengths: i32[B]. -> [B, H, D]."""
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_options(soft_cap, sliding_window)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pages.shape[2]
    scale = default_scale(scale, head_dim)
    lengths = lengths.astype(jnp.int32)
    qw = q.astype(jnp.float32).reshape(batch, 1, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = windowed_attention(
        qw * scale, (lengths - 1)[:, None], (lengths > 0)[:, None], k_pages, v_pages,
        block_tables, lengths, soft_cap=soft_cap, sliding_window=sliding_window,
        k_scales=k_scales, v_scales=v_scales, kv_block_tokens=kv_block_tokens)
    return out.reshape(batch, num_heads, head_dim).astype(q.dtype)
