"""Ragged paged attention on the blocked jnp kernels (CPU): two calls behind the one interface.

Same arguments and result as reference.ragged_paged_attention; see two_calls.py for the split.
"""
from __future__ import annotations

from pallas_kernels.paged_decode import xla as decode_impl
from pallas_kernels.ragged_paged.two_calls import two_calls
from pallas_kernels.ragged_prefill import xla as prefill_impl


def ragged_paged_attention(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, *,
                           num_short_seqs: int, short_q_len: int, max_q_len: int, scale=None,
                           soft_cap=None, sliding_window=None, k_scales=None, v_scales=None,
                           k_new=None, v_new=None):
    """q: [T, H, D]; block_tables: i32[N, M]; cu_q_lens: i32[N+1]; kv_lens: i32[N]. -> [T, H, D].

    k_new, v_new: optional [T, K, D], the step's own K/V; the prefill path may read a lone
    fresh chunk from them (see ragged_prefill/xla.py).
    """
    options = dict(scale=scale, soft_cap=soft_cap, sliding_window=sliding_window,
                   k_scales=k_scales, v_scales=v_scales)

    def decode(q, tables, lengths):
        return decode_impl.paged_decode_attention(q, k_pages, v_pages, tables, lengths, **options)

    def prefill(q, tables, cu, lens, window, k_new, v_new):
        return prefill_impl.ragged_prefill_attention(q, k_pages, v_pages, tables, cu, lens,
                                                     max_q_len=window, k_new=k_new, v_new=v_new,
                                                     **options)

    return two_calls(decode, prefill, q, block_tables, cu_q_lens, kv_lens,
                     num_short_seqs=num_short_seqs, short_q_len=short_q_len, max_q_len=max_q_len,
                     k_new=k_new, v_new=v_new)
