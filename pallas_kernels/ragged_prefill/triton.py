"""Ragged paged prefill attention as a Pallas kernel lowered through Triton (GPU).

Takes the same arguments as reference.ragged_prefill_attention, plus `interpret`; gives the same
[T, H, D] output. Flash attention over pages: one program per (sequence, query block, query
head) loads block_q of the sequence's packed queries, walks its K/V in blocks of block_kv tokens
(page ids read from the block table, token rows gathered), and keeps an online softmax in f32, so
no score matrix larger than [block_q, block_kv] ever exists. Blocks wholly below the causal
diagonal skip the mask; only the diagonal (and sliding-window) blocks pay for it. Query blocks
past a sequence's chunk exit at once, so the static grid (N, cdiv(max_q_len, block_q), H) costs
little when chunks are short.

Pool view, constraints and the int8 path are as in paged_decode/triton.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.common import MASK_VALUE, check_options, check_pages, default_scale
from pallas_kernels.paged_decode.triton import _check_triton
from pallas_kernels.ragged_prefill import block_sizes
from pallas_kernels.ragged_prefill.reference import check_ragged


def _prefill_kernel(
    cu_q_lens_ref,    # i32[N+1] (whole)
    kv_lens_ref,      # i32[N] (whole)
    block_table_ref,  # i32[M'] this sequence's pages
    q_ref,            # [T, H*D] all queries
    k_ref,            # [P*S, K*D] the whole pool
    v_ref,            # [P*S, K*D]
    k_scale_ref,      # f32[P, K] or None
    v_scale_ref,      # f32[P, K] or None
    o_ref,            # [T, H*D] all outputs; each program writes its own rows
    *, group, head_dim, page_size, block_q, block_kv, scale, soft_cap, sliding_window, precision,
):
    """One (sequence, query block, query head): causal flash attention over the pages."""
    n, h = pl.program_id(0), pl.program_id(2)
    qb = pl.num_programs(1) - 1 - pl.program_id(1)     # longest blocks first: better tail balance
    num_tokens = q_ref.shape[0]
    q_start = cu_q_lens_ref[n]
    q_len = cu_q_lens_ref[n + 1] - q_start
    kv_len = kv_lens_ref[n]

    @pl.when(qb * block_q < q_len)
    def _():
        i = qb * block_q + jnp.arange(block_q, dtype=jnp.int32)
        q_valid = i < q_len
        q_rows = jnp.minimum(q_start + i, num_tokens - 1)[:, None]            # i32[BQ, 1]
        q_cols = (h * head_dim + jnp.arange(head_dim, dtype=jnp.int32))[None, :]
        kv_cols = ((h // group) * head_dim + jnp.arange(head_dim, dtype=jnp.int32))[None, :]
        q = plgpu.load(q_ref.at[q_rows, q_cols], mask=q_valid[:, None], other=0)
        q_pos = kv_len - q_len + i                                           # i32[BQ]
        first_q_pos = kv_len - q_len + qb * block_q
        end = jnp.minimum(kv_len, first_q_pos + block_q)                     # past the last key
        start = 0 if sliding_window is None else jnp.maximum(first_q_pos - sliding_window + 1, 0)
        offsets = jnp.arange(block_kv, dtype=jnp.int32)

        def body(blk, carry, masked):
            acc, m, l = carry
            pos = blk * block_kv + offsets                                   # i32[BK]
            page = block_table_ref[pos // page_size]
            rows = (page * page_size + pos % page_size)[:, None]
            kv_valid = (pos < kv_len)[:, None]
            # Masked loads read nothing past the sequence: unused slots may hold NaN.
            k = plgpu.load(k_ref.at[rows, kv_cols], mask=kv_valid, other=0)
            v = plgpu.load(v_ref.at[rows, kv_cols], mask=kv_valid, other=0)
            logits = plgpu.dot(q, k.astype(q.dtype), trans_b=True, precision=precision)
            if k_scale_ref is not None:
                logits *= plgpu.load(k_scale_ref.at[page, h // group], mask=pos < kv_len, other=0)[None, :]
            logits *= scale
            if soft_cap is not None:
                logits = soft_cap * jnp.tanh(logits / soft_cap)
            if masked:
                valid = pos[None, :] <= q_pos[:, None]
                if sliding_window is not None:
                    valid &= pos[None, :] > q_pos[:, None] - sliding_window
                logits = jnp.where(valid, logits, MASK_VALUE)
            m_new = jnp.maximum(m, logits.max(axis=1))
            p = jnp.exp(logits - m_new[:, None])
            if masked:
                p = jnp.where(valid, p, 0.0)
            alpha = jnp.exp(m - m_new)
            l = alpha * l + p.sum(axis=1)
            if v_scale_ref is not None:
                p *= plgpu.load(v_scale_ref.at[page, h // group], mask=pos < kv_len, other=0)[None, :]
            pv = plgpu.dot(p.astype(q.dtype), v.astype(q.dtype), precision=precision)
            return alpha[:, None] * acc + pv, m_new, l

        carry = (jnp.zeros((block_q, head_dim), jnp.float32),
                 jnp.full((block_q,), MASK_VALUE, jnp.float32),
                 jnp.zeros((block_q,), jnp.float32))
        start_block = start // block_kv
        end_block = pl.cdiv(end, block_kv)
        if sliding_window is None:
            # Keys at or before the block's first query position are visible to every row.
            full_end = jnp.clip((first_q_pos + 1) // block_kv, start_block, end_block)
            carry = jax.lax.fori_loop(start_block, full_end,
                                      functools.partial(body, masked=False), carry)
        else:
            full_end = start_block
        acc, m, l = jax.lax.fori_loop(full_end, end_block, functools.partial(body, masked=True), carry)
        out = jnp.where(l[:, None] > 0, acc / jnp.where(l > 0, l, 1.0)[:, None], 0.0)
        plgpu.store(o_ref.at[q_rows, q_cols], out.astype(o_ref.dtype), mask=q_valid[:, None])


@functools.partial(jax.jit, static_argnames=("max_q_len", "scale", "soft_cap", "sliding_window",
                                             "interpret", "block_q", "block_kv", "num_warps",
                                             "num_stages"))
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
    block_q: int | None = None,
    block_kv: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> jax.Array:
    """Ragged prefill on GPU; arguments and result as in reference.ragged_prefill_attention.

    block_q, block_kv, num_warps, num_stages override block_sizes.py (for tuning).
    """
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_ragged(q, block_tables, cu_q_lens, kv_lens, max_q_len)
    check_options(soft_cap, sliding_window)
    _check_triton(q, k_pages)
    num_tokens, num_heads, head_dim = q.shape
    num_pages, page_size, num_kv_heads, _ = k_pages.shape
    num_seqs, max_pages = block_tables.shape
    sizes = block_sizes.triton_block_sizes(head_dim, jnp.dtype(k_pages.dtype).name)
    block_q = block_q or sizes.block_q
    block_kv = block_kv or sizes.block_kv
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None

    # Block tables cover every block the loop can touch, so pos // S stays in range.
    padded_pages = pl.cdiv(pl.cdiv(max_pages * page_size, block_kv) * block_kv, page_size)
    tables = jnp.pad(block_tables.astype(jnp.int32), ((0, 0), (0, padded_pages - max_pages)))
    q2 = q.reshape(num_tokens, num_heads * head_dim)
    k2 = k_pages.reshape(num_pages * page_size, num_kv_heads * head_dim)
    v2 = v_pages.reshape(num_pages * page_size, num_kv_heads * head_dim)

    whole = lambda a: pl.BlockSpec(a.shape, lambda n, i, h: (0,) * a.ndim)
    kernel = functools.partial(
        _prefill_kernel, group=num_heads // num_kv_heads, head_dim=head_dim, page_size=page_size, block_q=block_q,
        block_kv=block_kv, scale=default_scale(scale, head_dim), soft_cap=soft_cap,
        sliding_window=sliding_window, precision=precision)
    out = pl.pallas_call(
        kernel,
        grid=(num_seqs, pl.cdiv(max_q_len, block_q), num_heads),
        in_specs=[
            whole(cu_q_lens), whole(kv_lens),
            pl.BlockSpec((None, padded_pages), lambda n, i, h: (n, 0)),
            whole(q2), whole(k2), whole(v2),
            None if k_scales is None else whole(k_scales),
            None if v_scales is None else whole(v_scales),
        ],
        out_specs=whole(q2),
        out_shape=jax.ShapeDtypeStruct(q2.shape, q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps or sizes.num_warps,
                                             num_stages=num_stages or sizes.num_stages),
        interpret=interpret,
        name="ragged_prefill_attention",
    )(cu_q_lens.astype(jnp.int32), kv_lens.astype(jnp.int32), tables, q2, k2, v2, k_scales, v_scales)
    # Rows past the last sequence belong to no program and hold whatever the buffer held.
    real = jnp.arange(num_tokens) < cu_q_lens[num_seqs]
    return jnp.where(real[:, None], out, 0).reshape(num_tokens, num_heads, head_dim)
