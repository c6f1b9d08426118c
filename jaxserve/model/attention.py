"""The attention interface of the model: one call for paged decode, one for ragged prefill.

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
    meta_fields=["mode", "max_q_len"],
)
@dataclass
class ModelBatch:
    """One padded step for the model. Decode: T == N, one token per sequence."""

    tokens: jax.Array          # i32[T]
    positions: jax.Array       # i32[T]
    slots: jax.Array           # i32[T] page * S + offset; padding -> page 0
    block_tables: jax.Array    # i32[N, M] page ids within a layer; padding -> 0
    kv_lens: jax.Array         # i32[N] tokens cached after this step; 0 for padding rows
    cu_q_lens: jax.Array       # i32[N+1] query offsets (prefill); decode: arange(N+1)
    logits_indices: jax.Array  # i32[N] the token row whose logits each sequence needs
    mode: str                  # "decode" | "prefill"
    max_q_len: int             # static bound on any sequence's query count


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
    if batch.mode == "decode":
        return pallas_kernels.paged_decode_attention(
            q, k_pages, v_pages, tables, batch.kv_lens, **options)
    return pallas_kernels.ragged_prefill_attention(
        q, k_pages, v_pages, tables, batch.cu_q_lens, batch.kv_lens, max_q_len=batch.max_q_len,
        k_new=k, v_new=v, **options)
