"""Ragged paged prefill attention in plain jnp: the spec the kernels are tested against.

Takes the packed new query tokens of N sequences (one chunk each, its K/V already written to the
pages) and gives their causal attention over each sequence's cached pages plus the chunk itself.
Query i of sequence n sits at absolute position kv_lens[n] - q_len[n] + i, so chunked prefill and
prefix-cache hits are the same case.

It is also the engine's CPU path: it works per sequence (vmap) on a window of max_q_len queries
cut from q with dynamic_slice, so memory is O(N * max_q_len * M*S * H), then gathers each token's
row back into the packed [T, ...] layout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common import EXACT, MASK_VALUE, check_options, check_pages, default_scale
from pallas_kernels.paged_decode.reference import gather_pages


def check_ragged(q, block_tables, cu_q_lens, kv_lens, max_q_len: int) -> None:
    """Shape checks specific to the packed layout."""
    num_seqs = block_tables.shape[0]
    if q.ndim != 3 or cu_q_lens.shape != (num_seqs + 1,) or kv_lens.shape != (num_seqs,):
        raise ValueError("expected q [T, H, D], cu_q_lens [N+1], kv_lens [N] with N = "
                         f"block_tables.shape[0]; got q={q.shape}, block_tables={block_tables.shape}, "
                         f"cu_q_lens={cu_q_lens.shape}, kv_lens={kv_lens.shape}")
    if not max_q_len > 0:
        raise ValueError(f"max_q_len must be > 0; got {max_q_len}")


def token_rows(cu_q_lens: jax.Array, num_tokens: int):
    """For each packed token: (its sequence, its index in that sequence's chunk, is it real)."""
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    num_seqs = cu_q_lens.shape[0] - 1
    seq = jnp.searchsorted(cu_q_lens, t, side="right").astype(jnp.int32) - 1
    seq = jnp.clip(seq, 0, num_seqs - 1)
    return seq, t - cu_q_lens[seq], t < cu_q_lens[num_seqs]


def ragged_prefill_attention(
    q: jax.Array,             # [T, H, D]
    k_pages: jax.Array,       # [P, S, K, D]
    v_pages: jax.Array,       # [P, S, K, D]
    block_tables: jax.Array,  # i32[N, M]
    cu_q_lens: jax.Array,     # i32[N+1]
    kv_lens: jax.Array,       # i32[N]
    *,
    max_q_len: int,
    scale: float | None = None,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    k_scales: jax.Array | None = None,  # f32[P, K]
    v_scales: jax.Array | None = None,  # f32[P, K]
) -> jax.Array:
    """Causal attention of packed query chunks over their sequences' pages.

    Args:
      q: [T, H, D] queries of N sequences, packed; sequence n owns rows
        cu_q_lens[n]:cu_q_lens[n+1]; rows at or past cu_q_lens[N] are padding.
      k_pages, v_pages: [P, S, K, D] the page pool, the chunks' own K/V already written.
      block_tables: i32[N, M] page ids of each sequence in order.
      cu_q_lens: i32[N+1] offsets of each sequence's queries in q.
      kv_lens: i32[N] tokens cached per sequence including its chunk; 0 for padding sequences.
      max_q_len: static bound on any chunk length cu_q_lens[n+1] - cu_q_lens[n].
      scale, soft_cap, sliding_window, k_scales, v_scales: as in paged_decode_attention.

    Returns:
      [T, H, D] in q.dtype; padding rows are zeros.
    """
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_ragged(q, block_tables, cu_q_lens, kv_lens, max_q_len)
    check_options(soft_cap, sliding_window)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_pages.shape[2]
    group = num_heads // num_kv_heads
    scale = default_scale(scale, head_dim)
    cu_q_lens = cu_q_lens.astype(jnp.int32)
    kv_lens = kv_lens.astype(jnp.int32)

    # Pad so a window of max_q_len rows starting at any offset <= T stays in bounds
    # (dynamic_slice would otherwise clamp the start and misalign the window).
    q_padded = jnp.pad(q.astype(jnp.float32), ((0, max_q_len), (0, 0), (0, 0)))

    def one_sequence(q_start, q_len, kv_len, pages):
        qs = jax.lax.dynamic_slice_in_dim(q_padded, q_start, max_q_len)   # f32[Q, H, D]
        qs = qs.reshape(max_q_len, num_kv_heads, group, head_dim)
        k = gather_pages(k_pages, pages[None], None if k_scales is None else k_scales)[0]
        v = gather_pages(v_pages, pages[None], None if v_scales is None else v_scales)[0]
        logits = jnp.einsum("qkgd,ckd->kgqc", qs, k, preferred_element_type=jnp.float32,
                        precision=EXACT) * scale
        if soft_cap is not None:
            logits = soft_cap * jnp.tanh(logits / soft_cap)

        q_pos = kv_len - q_len + jnp.arange(max_q_len)                    # i32[Q]
        kv_pos = jnp.arange(k.shape[0])                                   # i32[C]
        valid = kv_pos[None, :] <= q_pos[:, None]                         # bool[Q, C]
        valid &= (jnp.arange(max_q_len) < q_len)[:, None]
        if sliding_window is not None:
            valid &= kv_pos[None, :] > q_pos[:, None] - sliding_window

        logits = jnp.where(valid, logits, MASK_VALUE)
        probs = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = jnp.where(valid, probs, 0.0)                 # NaN logits of unused pages -> 0
        denom = probs.sum(axis=-1, keepdims=True)            # f32[K, G, Q, 1]
        v = jnp.where((kv_pos < kv_len)[:, None, None], v, 0.0)   # 0 * NaN would still be NaN
        out = jnp.einsum("kgqc,ckd->qkgd", probs, v, preferred_element_type=jnp.float32,
                        precision=EXACT)
        denom = jnp.moveaxis(denom, 2, 0)                    # f32[Q, K, G, 1]
        out = jnp.where(denom > 0, out / jnp.where(denom > 0, denom, 1.0), 0.0)
        return out.reshape(max_q_len, num_heads, head_dim)

    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    per_seq = jax.vmap(one_sequence)(cu_q_lens[:-1], q_lens, kv_lens, block_tables)  # [N, Q, H, D]

    seq, offset, real = token_rows(cu_q_lens, num_tokens)
    out = per_seq[seq, jnp.clip(offset, 0, max_q_len - 1)]                  # [T, H, D]
    return jnp.where(real[:, None, None], out, 0.0).astype(q.dtype)
