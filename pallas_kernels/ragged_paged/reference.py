"""Ragged paged attention in plain jnp: the spec of the one mixed-batch attention call.

One step's queries of N sequences are packed into q, sequence n owning rows
cu_q_lens[n]:cu_q_lens[n+1] (its K/V already written to the pages). Each query attends
causally over its sequence's cached tokens, the chunk's earlier tokens and itself; query i of
sequence n sits at position kv_lens[n] - q_len[n] + i. A decode row is a sequence of one query,
a speculative verify row one of k + 1, a prefill chunk (after a cached prefix or not) one of
any length up to max_q_len: all are the same case, which is why one call serves a whole step.

The batch is split into two kinds only to let backends pick a fast path per kind (see
two_calls.py): the first num_short_seqs sequences ("short": decode and verify rows) have at most
short_q_len queries each, and when short_q_len == 1 exactly one each (a padding one with kv_len
0), so their queries are rows 0..num_short_seqs-1; the rest ("long": prefill chunks) have at
most max_q_len each and follow them, their queries totalling at most
T - num_short_seqs * short_q_len (a packer reserves the short rows' room first). The spec's
result does not depend on the split: this reference ignores it, and backends must agree with it.
"""
from __future__ import annotations

import jax

from pallas_kernels.ragged_prefill.reference import ragged_prefill_attention


def check_split(q, block_tables, cu_q_lens, num_short_seqs: int, short_q_len: int,
                max_q_len: int) -> None:
    """Static checks of the short/long split against the shapes."""
    num_seqs, num_tokens = block_tables.shape[0], q.shape[0]
    if not 0 <= num_short_seqs <= num_seqs:
        raise ValueError(f"num_short_seqs must be in [0, N = {num_seqs}]; got {num_short_seqs}")
    if short_q_len < 1 or max_q_len < 1:
        raise ValueError(f"short_q_len and max_q_len must be >= 1; got {short_q_len}, {max_q_len}")
    if num_short_seqs * short_q_len > num_tokens:
        raise ValueError(f"{num_short_seqs} short sequences of up to {short_q_len} queries do not "
                         f"fit in q's {num_tokens} rows")
    if cu_q_lens.shape != (num_seqs + 1,):
        raise ValueError(f"cu_q_lens must be [N+1] = [{num_seqs + 1}]; got {cu_q_lens.shape}")


def ragged_paged_attention(
    q: jax.Array,             # [T, H, D]
    k_pages: jax.Array,       # [P, S, K, D]
    v_pages: jax.Array,       # [P, S, K, D]
    block_tables: jax.Array,  # i32[N, M]
    cu_q_lens: jax.Array,     # i32[N+1]
    kv_lens: jax.Array,       # i32[N]
    *,
    num_short_seqs: int,
    short_q_len: int,
    max_q_len: int,
    scale: float | None = None,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    k_scales: jax.Array | None = None,  # f32[P, K]
    v_scales: jax.Array | None = None,  # f32[P, K]
) -> jax.Array:
    """Causal attention of a mixed batch's packed queries over their sequences' pages.

    Args:
      q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens: as in ragged_prefill_attention;
        rows at or past cu_q_lens[N] are padding.
      num_short_seqs, short_q_len: the first num_short_seqs sequences have at most short_q_len
        queries each (exactly one each when short_q_len == 1).
      max_q_len: static bound on the query count of every other sequence.
      scale, soft_cap, sliding_window, k_scales, v_scales: as in paged_decode_attention.

    Returns:
      [T, H, D] in q.dtype; padding rows are zeros.
    """
    check_split(q, block_tables, cu_q_lens, num_short_seqs, short_q_len, max_q_len)
    return ragged_prefill_attention(
        q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens,
        max_q_len=max(short_q_len, max_q_len), scale=scale, soft_cap=soft_cap,
        sliding_window=sliding_window, k_scales=k_scales, v_scales=v_scales)
