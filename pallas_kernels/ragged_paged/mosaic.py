"""Ragged paged attention on the mosaic Pallas kernels: two calls behind the one interface.

Same arguments and result as reference.ragged_paged_attention, plus `interpret`;
see two_calls.py for the split.
"""
from __future__ import annotations

from pallas_kernels.paged_decode import mosaic as decode_impl
from pallas_kernels.ragged_paged.two_calls import two_calls
from pallas_kernels.ragged_prefill import mosaic as prefill_impl


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
