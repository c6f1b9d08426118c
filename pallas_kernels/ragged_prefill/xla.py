"""Ragged causal prefill attention for XLA:CPU: the reference's math in cache-sized blocks.

Same signature and result as reference.ragged_prefill_attention (the spec). Each sequence's
chunk is cut from the packed queries as a window of max_q_len rows (as in the reference); the
blocked core (pallas_kernels/blocked.py) then stops every query block at its diagonal.

Given the step's own K/V (k_new, v_new), a lone chunk with no cached prefix (a whole prompt up
to the step budget: the common prefill) attends over them directly instead: no page gather and
no loop, query blocks of static size over the keys up to their diagonal. On a 2-core CPU, a
512-token SmolLM2 prompt: 7-8.6 -> 4.8-5.7 ms per layer. The values are first rounded to the pool's
dtype, so this path sees exactly what the pages hold.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.blocked import KV_BLOCK_TOKENS, Q_BLOCK, windowed_attention
from pallas_kernels.common import (BF16_BITS, EXACT, MASK_VALUE, check_options, check_pages,
                                   default_scale)
from pallas_kernels.ragged_prefill.reference import check_ragged, token_rows


def ragged_prefill_attention(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, *,
                             max_q_len: int, scale=None, soft_cap=None, sliding_window=None,
                             k_scales=None, v_scales=None, kv_block_tokens: int = KV_BLOCK_TOKENS,
                             q_block: int = Q_BLOCK, k_new=None, v_new=None) -> jax.Array:
    """q: [T, H, D]; block_tables: i32[N, M]; cu_q_lens: i32[N+1]; kv_lens: i32[N]. -> [T, H, D].

    k_new, v_new: optional [T, K, D], this step's keys and values in q's row order (already
    written to the pages). Used, when N == 1 and the chunk has no cached prefix, in place of
    the pages; ignored for int8 pools, soft caps and sliding windows.
    """
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_ragged(q, block_tables, cu_q_lens, kv_lens, max_q_len)
    check_options(soft_cap, sliding_window)
    paged = lambda: _paged(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, max_q_len,
                           scale, soft_cap, sliding_window, k_scales, v_scales, kv_block_tokens,
                           q_block)
    if (k_new is None or block_tables.shape[0] != 1 or k_scales is not None
            or soft_cap is not None or sliding_window is not None):
        return paged()
    if k_new.shape != (q.shape[0], *k_pages.shape[2:]) or v_new.shape != k_new.shape:
        raise ValueError(f"k_new and v_new must be [T, K, D] = {(q.shape[0], *k_pages.shape[2:])}; "
                         f"got {k_new.shape} and {v_new.shape}")
    pool_dtype = jnp.bfloat16 if k_pages.dtype == BF16_BITS else k_pages.dtype
    as_stored = lambda x: x.astype(pool_dtype).astype(jnp.float32)
    q_len = cu_q_lens[1] - cu_q_lens[0]
    fresh = lambda: _fresh_chunk(q, as_stored(k_new), as_stored(v_new), q_len, scale, q_block)
    return jax.lax.cond(kv_lens[0] == q_len, fresh, paged)


def _fresh_chunk(q, k, v, q_len, scale, q_block):
    """Causal attention of rows [0, q_len) of q over k, v [T, K, D] f32; other rows zeros."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    qg = (q.astype(jnp.float32) * default_scale(scale, head_dim)).reshape(
        num_tokens, num_kv_heads, group, head_dim)
    row = jnp.arange(num_tokens)
    outs = []
    for start in range(0, num_tokens, q_block):
        end = min(start + q_block, num_tokens)

        def block(start=start, end=end):
            # Keys [0, end): those past the diagonal are masked, never those a later block needs.
            s = jnp.einsum("qkgd,ckd->kgqc", qg[start:end], k[:end],
                           preferred_element_type=jnp.float32, precision=EXACT)
            valid = (row[None, :end] <= row[start:end, None]) & (row[start:end, None] < q_len)
            s = jnp.where(valid, s, MASK_VALUE)
            p = jnp.where(valid, jnp.exp(s - s.max(axis=-1, keepdims=True)), 0.0)
            l = p.sum(axis=-1)                                              # [K, G, Qb]
            o = jnp.einsum("kgqc,ckd->kgqd", p, v[:end], preferred_element_type=jnp.float32,
                           precision=EXACT)
            o = jnp.where(l[..., None] > 0, o / jnp.where(l > 0, l, 1.0)[..., None], 0.0)
            return jnp.moveaxis(o, 2, 0).reshape(end - start, num_heads, head_dim)

        # Blocks wholly past the chunk (a short prompt in a large bucket) are skipped at run time.
        outs.append(jax.lax.cond(start < q_len, block,
                                 lambda n=end - start: jnp.zeros((n, num_heads, head_dim))))
    return jnp.concatenate(outs).astype(q.dtype)


def _paged(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, max_q_len, scale, soft_cap,
           sliding_window, k_scales, v_scales, kv_block_tokens, q_block):
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
