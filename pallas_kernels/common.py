"""Pieces every kernel and reference shares: the mask constant and the input checks.

The checks run at trace time on shapes and dtypes only (never on traced values), so they cost
nothing per step and raise ValueError naming the argument and its shape.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Logit given to masked positions. Not -inf: a row whose positions are all masked (padding rows,
# blocks entirely outside the window) would compute exp(-inf - (-inf)) = exp(nan). A finite value
# keeps every max/exp well defined, and -0.7 * f32 max still leaves headroom so that subtracting a
# real logit from it cannot overflow to -inf. Probabilities of masked positions are also zeroed
# with jnp.where, because unused pages may hold NaN and 0 * NaN is NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

# f32 dots at full precision: XLA:GPU (and interpret mode on a GPU) would otherwise run them
# in TF32. The references, the XLA path and the Mosaic kernels all multiply with this.
EXACT = jax.lax.Precision.HIGHEST

# The Triton decode kernel computes its softmax in base 2 (exp2 is one instruction, exp a libdevice
# call): logits are multiplied by log2(e) first, which leaves the normalized probabilities unchanged.
LOG2E = math.log2(math.e)


# Pages may be uint16 holding bfloat16 bits. XLA:CPU, given a bfloat16 array that a loop reads,
# converts all of it to f32 once per call (for a KV pool: gigabytes per step); uint16 it leaves
# alone, so CPU pools of bf16 are stored as bits and read through bf16_view after the gather.
BF16_BITS = jnp.uint16


def bf16_view(pages: jax.Array) -> jax.Array:
    """bfloat16 pages or a gather of them, reinterpreted from their uint16 bits; others as they are."""
    return jax.lax.bitcast_convert_type(pages, jnp.bfloat16) if pages.dtype == BF16_BITS else pages


def default_scale(scale: float | None, head_dim: int) -> float:
    """1/sqrt(D) unless the caller gave a scale."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _shapes(**arrays) -> str:
    return ", ".join(f"{k}={tuple(v.shape)}" for k, v in arrays.items() if v is not None)


def check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales) -> None:
    """Checks what decode and prefill share: pool shapes, GQA grouping, int8 scales."""
    shapes = _shapes(q=q, k_pages=k_pages, v_pages=v_pages, block_tables=block_tables,
                     k_scales=k_scales, v_scales=v_scales)
    if k_pages.ndim != 4 or k_pages.shape != v_pages.shape:
        raise ValueError(f"k_pages and v_pages must both be [P, S, K, D]; got {shapes}")
    num_pages, _, num_kv_heads, head_dim = k_pages.shape
    if q.shape[-1] != head_dim:
        raise ValueError(f"q's head_dim must match the pages' D={head_dim}; got {shapes}")
    if q.shape[-2] % num_kv_heads:
        raise ValueError(f"q heads H must be a multiple of kv heads K={num_kv_heads}; got {shapes}")
    if block_tables.ndim != 2 or not jnp.issubdtype(block_tables.dtype, jnp.integer):
        raise ValueError(f"block_tables must be an integer [rows, M] array; got {shapes}, "
                         f"dtype {block_tables.dtype}")
    quantized = k_pages.dtype == jnp.int8
    if quantized != (k_scales is not None) or (k_scales is None) != (v_scales is None):
        raise ValueError("k_scales and v_scales are required exactly when the pages are int8; "
                         f"got pages {k_pages.dtype}, k_scales {k_scales is not None}, "
                         f"v_scales {v_scales is not None}")
    if quantized and (k_scales.shape != (num_pages, num_kv_heads) or v_scales.shape != k_scales.shape):
        raise ValueError(f"k_scales and v_scales must be f32[P, K]; got {shapes}")


def check_options(soft_cap: float | None, sliding_window: int | None) -> None:
    """soft_cap and sliding_window must be positive when given."""
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"soft_cap must be > 0 or None; got {soft_cap}")
    if sliding_window is not None and not sliding_window > 0:
        raise ValueError(f"sliding_window must be > 0 or None; got {sliding_window}")
