"""Ragged causal prefill attention for XLA:CPU: the reference's math in cache-sized blocks.

Same signature and result as reference.ragged_prefill_attention (the spec). Each sequence's
chunk is cut from the packed queries as a window of max_q_len rows (as in the reference); the
blocked core (pallas_kernels/blocked.py) then stops every query block at its diagonal.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.blocked import KV_BLOCK_TOKENS, Q_BLOCK, windowed_attention
from pallas_kernels.common import check_options, check_pages, default_scale
from pallas_kernels.ragged_prefill.reference import check_ragged, token_rows


def ragged_prefill_attention(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, *,
                             max_q_len: int, scale=None, soft_cap=None, sliding_window=None,
                             k_scales=None, v_scales=None, kv_block_tokens: int = KV_BLOCK_TOKENS,
                             q_block: int = Q_BLOCK) -> jax.Array:
    """q: [T, H, D]; block_tables: i32[N, M]; cu_q_lens: i32[N+1]; kv_lens: i32[N]. -> [T, H, D]."""
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_ragged(q, block_tables, cu_q_lens, kv_lens, max_q_len)
    check_options(soft_cap, sliding_window)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_pages.shape[2]
    group = num_heads // num_kv_heads
    scale = default_scale(scale, head_dim)
    cu_q_lens, kv_lens = cu_q_lens.astype(jnp.int32), kv_lens.astype(jnp.int32)
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]

    # Window n = rows cu_q_lens[n] .. + max_q_len of q (padded so every window is in bounds).
    q_padded = jnp.pad(q.astype(jnp.float32) * scale, ((0, max_q_len), (0, 0), (0, 0)))
    rows = cu_q_lens[:-1, None] + jnp.arange(max_q_len)[None, :]          # i32[N, Q]
    windows = q_padded[rows].reshape(-1, max_q_len, num_kv_heads, group, head_dim)
    offsets = jnp.arange(max_q_len)[None, :]
    q_pos = (kv_lens - q_lens)[:, None] + offsets
    q_valid = offsets < q_lens[:, None]
    per_seq = windowed_attention(
        windows, q_pos, q_valid, k_pages, v_pages, block_tables, kv_lens, soft_cap=soft_cap,
        sliding_window=sliding_window, k_scales=k_scales, v_scales=v_scales,
        kv_block_tokens=kv_block_tokens, q_block=q_block)
    per_seq = per_seq.reshape(-1, max_q_len, num_heads, head_dim)      # f32[N, Q, H, D]

    seq, offset, real = token_rows(cu_q_lens, num_tokens)
    out = per_seq[seq, jnp.clip(offset, 0, max_q_len - 1)]
    return jnp.where(real[:, None, None], out, 0.0).astype(q.dtype)
