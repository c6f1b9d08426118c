"""The attention interface of the model: one ragged paged call per layer for a whole step.

The model never picks a backend: it hands pools, block tables and lengths to `pallas_kernels`,
whose dispatch chooses the XLA reference (CPU), Triton (GPU) or Mosaic (TPU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax

import pallas_kernels
from jaxserve.kv_cache import layer_view


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tokens", "positions", "slots", "block_tables", "kv_lens", "cu_q_lens", "logits_indices"],
    meta_fields=["max_q_len", "num_short_seqs", "short_q_len"],
)
@dataclass
class ModelBatch:
    """One padded step for the model: decode, verify and prefill rows packed together.

    Sequences [0, num_short_seqs) are decode / verify rows of at most short_q_len tokens (exactly
    one when short_q_len == 1, so T starts with their N_short tokens); the others are prefill
    chunks of at most max_q_len tokens. See pallas_kernels/ragged_paged/reference.py.
    """

    tokens: jax.Array          # i32[T]
    positions: jax.Array       # i32[T]
    slots: jax.Array           # i32[T] page * S + offset; padding -> page 0
    block_tables: jax.Array    # i32[N, M] page ids within a layer; padding -> 0
    kv_lens: jax.Array         # i32[N] tokens cached after this step; 0 for padding rows
    cu_q_lens: jax.Array       # i32[N+1] query offsets of each sequence in tokens
    logits_indices: jax.Array  # i32[R] the token rows whose logits the step samples or verifies
    max_q_len: int             # static bound on a prefill chunk's token count
    num_short_seqs: int = 0    # static: leading decode / verify rows
    short_q_len: int = 1       # static: their bound (1 plain decodes, 1 + k with verify rows)

    def describe(self) -> str:
        """The compile key's shape part, for logs and benchmarks."""
        return (f"T={self.tokens.shape[0]} N={self.kv_lens.shape[0]} M={self.block_tables.shape[1]} "
                f"short={self.num_short_seqs}x{self.short_q_len} R={self.logits_indices.shape[0]}")


@dataclass(frozen=True)
class AttentionOptions:
    impl: str = "auto"
    interpret: bool = False


def paged_attention(q: jax.Array, k: jax.Array, v: jax.Array, k_pool: jax.Array,
                    v_pool: jax.Array, layer: jax.Array, batch: ModelBatch,
                    opts: AttentionOptions, *, sliding_window: int | None = None,
                    soft_cap: float | None = None, scale: float | None = None) -> jax.Array:
    """q: [T, H, D]; k, v: [T, K, D] this step's, which the pools [L, P, S, K*D] already hold.

    sliding_window: each query attends to its last `sliding_window` positions, itself included
      (Hugging Face's convention); soft_cap: logits become soft_cap * tanh(logits / soft_cap);
      scale: the logit scale, 1/sqrt(D) if None. All static: they are the layer kind's, not the step's.

    Returns [T, H, D]. A backend may read a prefill's fresh K/V from k, v instead of the pages.
    """
    num_pages = k_pool.shape[1]
    k_pages, v_pages = layer_view(k_pool, k.shape[1]), layer_view(v_pool, k.shape[1])
    tables = batch.block_tables + layer * num_pages
    options = dict(scale=scale, soft_cap=soft_cap, sliding_window=sliding_window,
                   impl=opts.impl, interpret=opts.interpret)
    return pallas_kernels.ragged_paged_attention(
        q, k_pages, v_pages, tables, batch.cu_q_lens, batch.kv_lens,
        num_short_seqs=batch.num_short_seqs, short_q_len=batch.short_q_len,
        max_q_len=batch.max_q_len, k_new=k, v_new=v, **options)
