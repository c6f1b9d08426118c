"""A mixed batch as two kernel calls, one per kind, behind the one ragged interface.

Short sequences (decode rows, verify rows) go to a decode kernel when each has one query, else
to the ragged kernel with a window of short_q_len; the long ones (prefill chunks) go to the
ragged kernel with windows of max_q_len. Splitting keeps every decode row from paying for a
prefill-sized query window, and reuses each backend's tuned kernels unchanged. The long queries
start at row cu_q_lens[num_short_seqs], known only at run time, so they are cut with a dynamic
slice of static length T - num_short_seqs * short_q_len (which always holds them) and put back
the same way.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.ragged_paged.reference import check_split


def two_calls(decode: Callable, prefill: Callable, q, block_tables, cu_q_lens, kv_lens, *,
              num_short_seqs: int, short_q_len: int, max_q_len: int, k_new=None, v_new=None):
    """decode(q, tables, kv_lens) and prefill(q, tables, cu, kv_lens, max_q_len, k_new, v_new)
    are one backend's kernels with the pools and options bound. Returns [T, H, D]."""
    check_split(q, block_tables, cu_q_lens, num_short_seqs, short_q_len, max_q_len)
    num_tokens, num_seqs = q.shape[0], block_tables.shape[0]
    ds = num_short_seqs
    short_rows = ds * short_q_len
    short = long = None
    if ds:
        if short_q_len == 1:
            short = decode(q[:ds], block_tables[:ds], kv_lens[:ds])
        else:
            short = prefill(q[:short_rows], block_tables[:ds], cu_q_lens[:ds + 1], kv_lens[:ds],
                            short_q_len, None, None)
    if num_seqs > ds:
        # With one query per short sequence the long part starts at a static row.
        start = ds if short_q_len == 1 else cu_q_lens[ds]
        cut = lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(
            x, start, num_tokens - short_rows)
        long = prefill(cut(q), block_tables[ds:], cu_q_lens[ds:] - start, kv_lens[ds:],
                       max_q_len, cut(k_new), cut(v_new))
    if long is None:
        return jnp.pad(short, ((0, num_tokens - short_rows), (0, 0), (0, 0)))
    if short is None:
        return long
    out = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(q), long.astype(q.dtype), start, 0)
    row = jnp.arange(short_rows)[:, None, None]
    return out.at[:short_rows].set(jnp.where(row < start, short.astype(q.dtype), out[:short_rows]))


def pallas_two_calls(decode_impl, prefill_impl) -> Callable:
    """ragged_paged_attention on one Pallas backend's modules (triton or mosaic): its paged decode
    kernel for one-query rows and its ragged prefill kernel for the rest, with `interpret`."""
    def ragged_paged_attention(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, *,
                               num_short_seqs: int, short_q_len: int, max_q_len: int, scale=None,
                               soft_cap=None, sliding_window=None, k_scales=None, v_scales=None,
                               interpret: bool = False):
        """q: [T, H, D]; block_tables: i32[N, M]; cu_q_lens: i32[N+1]; kv_lens: i32[N]. -> [T, H, D].

        interpret: run the Pallas kernels in interpret mode (any platform; slow, for tests).
        """
        options = dict(scale=scale, soft_cap=soft_cap, sliding_window=sliding_window,
                       k_scales=k_scales, v_scales=v_scales, interpret=interpret)

        def decode(q, tables, lengths):
            return decode_impl.paged_decode_attention(q, k_pages, v_pages, tables, lengths, **options)

        def prefill(q, tables, cu, lens, window, k_new, v_new):
            return prefill_impl.ragged_prefill_attention(q, k_pages, v_pages, tables, cu, lens,
                                                         max_q_len=window, **options)

        return two_calls(decode, prefill, q, block_tables, cu_q_lens, kv_lens,
                         num_short_seqs=num_short_seqs, short_q_len=short_q_len, max_q_len=max_q_len)
    return ragged_paged_attention
