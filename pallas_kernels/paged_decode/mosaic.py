"""Paged decode attention as a Pallas Mosaic kernel (TPU).

Takes the same arguments as reference.paged_decode_attention, plus `interpret`; gives the same
[B, H, D] output. It differs from the Triton kernel because a TPU cannot gather rows: pages
arrive by DMA, one page per grid step, addressed through the block tables held in SMEM as
scalar prefetch (PrefetchScalarGridSpec). Grid (B, M): the page axis is innermost and carries
the online softmax in VMEM scratch; steps past a sequence's last page (or before its sliding
window) re-request the same page, which the pipeline does not fetch again, and skip the math.
Each page block is [S, K, D], all kv heads, so its last two dims are whole array dims as Mosaic
requires; all H query heads ride along in one [H, D] block.

Tested only in TPU interpret mode on CPU (tests/kernels). Not yet run on a TPU: Mosaic's layout
rules (e.g. the [G, D] head slices, the per-page f32[K] scale block) may need adjusting there, and
one page per step is small for TPU DMAs; a multi-page block (several BlockSpecs over the same
pool, or manual async copies) is the obvious next step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import EXACT, MASK_VALUE, check_options, check_pages, default_scale


def _page_window(b, lengths_ref, page_size, sliding_window):
    """(first, last) page index a sequence needs; last < first when it has no tokens."""
    length = lengths_ref[b]
    first_pos = 0 if sliding_window is None else jnp.maximum(length - sliding_window, 0)
    return first_pos // page_size, (length - 1) // page_size


def _decode_kernel(
    lengths_ref,       # i32[B] scalar prefetch (SMEM)
    block_tables_ref,  # i32[B, M] scalar prefetch (SMEM)
    q_ref,             # [H, D]
    k_ref,             # [S, K, D] one page
    v_ref,             # [S, K, D]
    k_scale_ref,       # f32[K] this page's scales, or None
    v_scale_ref,       # f32[K], or None
    o_ref,             # [H, D]
    m_ref, l_ref,      # f32[H, 1] scratch: running max and denominator
    acc_ref,           # f32[H, D] scratch: unnormalized output
    *, scale, soft_cap, sliding_window,
):
    """One (sequence, page): folds this page into the running softmax of every head."""
    b, j = pl.program_id(0), pl.program_id(1)
    page_size, num_kv_heads, _ = k_ref.shape
    group = q_ref.shape[0] // num_kv_heads
    length = lengths_ref[b]
    first_page, last_page = _page_window(b, lengths_ref, page_size, sliding_window)

    @pl.when(j == 0)
    def _():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when((j >= first_page) & (j <= last_page))
    def _():
        pos = j * page_size + jax.lax.broadcasted_iota(jnp.int32, (1, page_size), 1)   # i32[1, S]
        valid = pos < length
        if sliding_window is not None:
            valid &= pos >= length - sliding_window
        for kh in range(num_kv_heads):
            heads = slice(kh * group, (kh + 1) * group)
            q = q_ref[heads, :].astype(jnp.float32)                                  # [G, D]
            k = k_ref[:, kh, :].astype(jnp.float32)                                  # [S, D]
            v = v_ref[:, kh, :].astype(jnp.float32)
            if k_scale_ref is not None:
                k = k * k_scale_ref[kh]
                v = v * v_scale_ref[kh]
            v = jnp.where(valid.T, v, 0.0)                   # unused slots may hold NaN
            logits = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                         preferred_element_type=jnp.float32,
                                         precision=EXACT) * scale
            if soft_cap is not None:
                logits = soft_cap * jnp.tanh(logits / soft_cap)
            logits = jnp.where(valid, logits, MASK_VALUE)
            m_prev = m_ref[heads, :]
            m_new = jnp.maximum(m_prev, logits.max(axis=1, keepdims=True))
            p = jnp.where(valid, jnp.exp(logits - m_new), 0.0)
            alpha = jnp.exp(m_prev - m_new)
            l_ref[heads, :] = alpha * l_ref[heads, :] + p.sum(axis=1, keepdims=True)
            acc_ref[heads, :] = alpha * acc_ref[heads, :] + jnp.dot(
                p, v, preferred_element_type=jnp.float32, precision=EXACT)
            m_ref[heads, :] = m_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        l = l_ref[...]
        o_ref[...] = jnp.where(l > 0, acc_ref[...] / jnp.where(l > 0, l, 1.0), 0.0).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "soft_cap", "sliding_window", "interpret"))
def paged_decode_attention(
    q: jax.Array,             # [B, H, D]
    k_pages: jax.Array,       # [P, S, K, D]
    v_pages: jax.Array,       # [P, S, K, D]
    block_tables: jax.Array,  # i32[B, M]
    lengths: jax.Array,       # i32[B]
    *,
    scale: float | None = None,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    k_scales: jax.Array | None = None,  # f32[P, K]
    v_scales: jax.Array | None = None,  # f32[P, K]
    interpret: bool = False,
) -> jax.Array:
    """Paged decode attention on TPU; arguments and result as in reference.paged_decode_attention."""
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_options(soft_cap, sliding_window)
    batch, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    max_pages = block_tables.shape[1]

    def page_of(b, j, lengths_ref, tables_ref):
        first, last = _page_window(b, lengths_ref, page_size, sliding_window)
        return tables_ref[b, jnp.clip(j, first, jnp.maximum(last, first))]

    page_spec = pl.BlockSpec((None, page_size, num_kv_heads, head_dim),
                             lambda b, j, *refs: (page_of(b, j, *refs), 0, 0, 0))
    scale_spec = pl.BlockSpec((None, num_kv_heads), lambda b, j, *refs: (page_of(b, j, *refs), 0))
    row_spec = pl.BlockSpec((None, num_heads, head_dim), lambda b, j, *refs: (b, 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(batch, max_pages),
        in_specs=[row_spec, page_spec, page_spec,
                  None if k_scales is None else scale_spec,
                  None if v_scales is None else scale_spec],
        out_specs=row_spec,
        scratch_shapes=[pltpu.VMEM((num_heads, 1), jnp.float32),
                        pltpu.VMEM((num_heads, 1), jnp.float32),
                        pltpu.VMEM((num_heads, head_dim), jnp.float32)],
    )
    kernel = functools.partial(_decode_kernel, scale=default_scale(scale, head_dim),
                               soft_cap=soft_cap, sliding_window=sliding_window)
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="paged_decode_attention",
    )(lengths.astype(jnp.int32), block_tables.astype(jnp.int32), q, k_pages, v_pages,
      k_scales, v_scales)
