"""Ragged paged prefill attention as a Pallas Mosaic kernel (TPU).

Takes the same arguments as reference.ragged_prefill_attention, plus `interpret`; gives the same
[T, H, D] output. It differs from the Triton kernel because a TPU block must start at a multiple
of its size, which packed chunks do not: the wrapper first cuts each sequence's chunk into a
window of max_q_len rows (as the reference does; q is small next to the pages), the kernel runs
over grid (N, query blocks, M) with one page [S, K, D] per step DMA'd through the block tables
held in SMEM (PrefetchScalarGridSpec), and the result is gathered back into packed rows.
Steps outside a query block's causal (and sliding-window) range re-request an in-range page,
which the pipeline does not fetch again, and skip the math; the online softmax lives in VMEM.

Tested only in TPU interpret mode on CPU (tests/kernels). Not yet run on a TPU: the per-head
[block_q, D] slices of the [block_q, H, D] query block and one-page steps are likely to need
re-layout and larger KV blocks there.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import EXACT, MASK_VALUE, check_options, check_pages, default_scale
from pallas_kernels.ragged_prefill.reference import check_ragged, token_rows

_BLOCK_Q = 32   # query rows per program; the window is padded to a multiple of it


def _page_range(n, qb, cu_ref, kv_lens_ref, page_size, block_q, sliding_window):
    """(first, last) page a query block reads; last < first when the block has no queries."""
    q_len = cu_ref[n + 1] - cu_ref[n]
    kv_len = kv_lens_ref[n]
    first_q_pos = kv_len - q_len + qb * block_q
    end = jnp.minimum(kv_len, first_q_pos + block_q)          # one past the last key read
    start = 0 if sliding_window is None else jnp.maximum(first_q_pos - sliding_window + 1, 0)
    last = jnp.where(qb * block_q < q_len, (end - 1) // page_size, -1)
    return start // page_size, last


def _prefill_kernel(
    cu_ref,            # i32[N+1] scalar prefetch (SMEM)
    kv_lens_ref,       # i32[N]
    block_tables_ref,  # i32[N, M]
    q_ref,             # [BQ, H, D] this query block of one sequence's window
    k_ref,             # [S, K, D] one page
    v_ref,             # [S, K, D]
    k_scale_ref,       # f32[K] or None
    v_scale_ref,       # f32[K] or None
    o_ref,             # [BQ, H, D]
    m_ref, l_ref,      # f32[H, BQ, 1] scratch
    acc_ref,           # f32[H, BQ, D] scratch
    *, scale, soft_cap, sliding_window,
):
    """One (sequence, query block, page): folds the page into every head's running softmax."""
    n, qb, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_q, num_heads, _ = q_ref.shape
    page_size, num_kv_heads, _ = k_ref.shape
    group = num_heads // num_kv_heads
    q_len = cu_ref[n + 1] - cu_ref[n]
    kv_len = kv_lens_ref[n]
    first, last = _page_range(n, qb, cu_ref, kv_lens_ref, page_size, block_q, sliding_window)

    @pl.when(j == 0)
    def _():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when((j >= first) & (j <= last))
    def _():
        q_pos = kv_len - q_len + qb * block_q + jax.lax.broadcasted_iota(jnp.int32, (block_q, 1), 0)
        k_pos = j * page_size + jax.lax.broadcasted_iota(jnp.int32, (1, page_size), 1)
        valid = (k_pos <= q_pos) & (k_pos < kv_len)                        # bool[BQ, S]
        if sliding_window is not None:
            valid &= k_pos > q_pos - sliding_window
        for h in range(num_heads):
            kh = h // group
            k = k_ref[:, kh, :].astype(jnp.float32)                        # [S, D]
            v = v_ref[:, kh, :].astype(jnp.float32)
            if k_scale_ref is not None:
                k = k * k_scale_ref[kh]
                v = v * v_scale_ref[kh]
            v = jnp.where((k_pos < kv_len).T, v, 0.0)       # unused slots may hold NaN
            q = q_ref[:, h, :].astype(jnp.float32)                         # [BQ, D]
            logits = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                         preferred_element_type=jnp.float32,
                                         precision=EXACT) * scale
            if soft_cap is not None:
                logits = soft_cap * jnp.tanh(logits / soft_cap)
            logits = jnp.where(valid, logits, MASK_VALUE)
            m_prev = m_ref[h]
            m_new = jnp.maximum(m_prev, logits.max(axis=1, keepdims=True))
            p = jnp.where(valid, jnp.exp(logits - m_new), 0.0)
            alpha = jnp.exp(m_prev - m_new)
            l_ref[h] = alpha * l_ref[h] + p.sum(axis=1, keepdims=True)
            acc_ref[h] = alpha * acc_ref[h] + jnp.dot(p, v, preferred_element_type=jnp.float32,
                                                         precision=EXACT)
            m_ref[h] = m_new

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        for h in range(num_heads):
            l = l_ref[h]
            o_ref[:, h, :] = jnp.where(l > 0, acc_ref[h] / jnp.where(l > 0, l, 1.0), 0.0
                                       ).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("max_q_len", "scale", "soft_cap", "sliding_window",
                                             "interpret"))
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
    interpret: bool = False,
) -> jax.Array:
    """Ragged prefill on TPU; arguments and result as in reference.ragged_prefill_attention."""
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_ragged(q, block_tables, cu_q_lens, kv_lens, max_q_len)
    check_options(soft_cap, sliding_window)
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    num_seqs, max_pages = block_tables.shape
    cu_q_lens = cu_q_lens.astype(jnp.int32)
    kv_lens = kv_lens.astype(jnp.int32)
    block_q = min(_BLOCK_Q, pl.next_power_of_2(max_q_len))
    window = pl.cdiv(max_q_len, block_q) * block_q

    # [N, window, H, D]: each sequence's chunk from its offset, padded past T so no slice clamps.
    q_padded = jnp.pad(q, ((0, window), (0, 0), (0, 0)))
    q_windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(q_padded, s, window))(cu_q_lens[:-1])

    def page_of(n, qb, j, cu_ref, kv_lens_ref, tables_ref):
        first, last = _page_range(n, qb, cu_ref, kv_lens_ref, page_size, block_q, sliding_window)
        return tables_ref[n, jnp.clip(j, first, jnp.maximum(last, first))]

    page_spec = pl.BlockSpec((None, page_size, num_kv_heads, head_dim),
                             lambda n, qb, j, *refs: (page_of(n, qb, j, *refs), 0, 0, 0))
    scale_spec = pl.BlockSpec((None, num_kv_heads), lambda n, qb, j, *refs: (page_of(n, qb, j, *refs), 0))
    q_spec = pl.BlockSpec((None, block_q, num_heads, head_dim), lambda n, qb, j, *refs: (n, qb, 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(num_seqs, window // block_q, max_pages),
        in_specs=[q_spec, page_spec, page_spec,
                  None if k_scales is None else scale_spec,
                  None if v_scales is None else scale_spec],
        out_specs=q_spec,
        scratch_shapes=[pltpu.VMEM((num_heads, block_q, 1), jnp.float32),
                        pltpu.VMEM((num_heads, block_q, 1), jnp.float32),
                        pltpu.VMEM((num_heads, block_q, head_dim), jnp.float32)],
    )
    kernel = functools.partial(_prefill_kernel, scale=default_scale(scale, head_dim),
                               soft_cap=soft_cap, sliding_window=sliding_window)
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q_windows.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="ragged_prefill_attention",
    )(cu_q_lens, kv_lens, block_tables.astype(jnp.int32), q_windows, k_pages, v_pages,
      k_scales, v_scales)

    seq, offset, real = token_rows(cu_q_lens, num_tokens)
    out = out[seq, jnp.clip(offset, 0, window - 1)]                        # [T, H, D]
    return jnp.where(real[:, None, None], out, 0).astype(q.dtype)
