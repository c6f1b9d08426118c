"""Paged decode attention as a Pallas kernel lowered through Triton (GPU).

Takes the same arguments as reference.paged_decode_attention, plus `interpret`; gives the same
[B, H, D] output. One program per (sequence, kv head, split): it loads the group's G query heads
as one [G, D] tile (padded to 16 rows, Triton's smallest dot), walks the sequence's pages in
blocks of block_kv tokens, reading page ids from the block table and gathering the token rows,
and keeps an online softmax in f32 (base 2). Full blocks take a loop body with no masks; only a
window's first block and the last block are masked. Splits (split-K) spread long sequences of
small batches over more programs; a few jnp ops merge them.

The pool is viewed as [P*S, K*D] (a free reshape, never a copy), so token t of page p, kv head h,
is row p*S + t, columns h*D:(h+1)*D. Constraints (checked with ValueError):
  - D is a power of two >= 16 (Triton tiles); S any power of two (pages need not fill a block);
  - P*S*K*D < 2**31: Triton computes offsets in int32.
A Mosaic-GPU variant would be a sibling module with the same signature, chosen in dispatch.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.common import LOG2E, MASK_VALUE, check_options, check_pages, default_scale
from pallas_kernels.paged_decode import block_sizes

_MIN_DOT = 16   # Triton's tl.dot needs every dimension >= 16


def _decode_kernel(
    lengths_ref,        # i32[B] (whole)
    block_table_ref,    # i32[M'] this sequence's pages
    q_ref,              # [Gp, D] this kv head's query heads, zero-padded to Gp rows
    k_ref,              # [P*S, K*D] the whole pool
    v_ref,              # [P*S, K*D]
    k_scale_ref,        # f32[P, K] or None
    v_scale_ref,        # f32[P, K] or None
    o_ref,              # [Gp, D] (f32 when split)
    m_ref,              # f32[Gp] running max (base 2), or None when not split
    l_ref,              # f32[Gp] running denominator, or None
    *, page_size, block_kv, num_splits, heads_fastest, scale, soft_cap, sliding_window, precision,
):
    """One (sequence, kv head, split): online softmax over its share of the blocks."""
    b, h = (pl.program_id(1), pl.program_id(0)) if heads_fastest else (pl.program_id(0), pl.program_id(1))
    split = pl.program_id(2)
    gp, head_dim = q_ref.shape
    length = lengths_ref[b]
    first = 0 if sliding_window is None else jnp.maximum(length - sliding_window, 0)
    first_block = first // block_kv
    num_blocks = pl.cdiv(length, block_kv) - first_block
    per_split = pl.cdiv(num_blocks, num_splits)
    lo = first_block + split * per_split
    hi = jnp.minimum(lo + per_split, first_block + num_blocks)

    q = q_ref[...]
    # Index with two broadcast integer arrays, not array + slice: the Triton lowering and the
    # interpreter both take that form.
    cols = (h * head_dim + jnp.arange(head_dim, dtype=jnp.int32))[None, :]   # i32[1, D]
    offsets = jnp.arange(block_kv, dtype=jnp.int32)

    def body(blk, carry, masked):
        acc, m, l = carry
        pos = blk * block_kv + offsets                                   # i32[block_kv]
        page = block_table_ref[pos // page_size]                         # i32[block_kv]
        rows = page * page_size + pos % page_size
        # Masked loads read nothing outside [first, length): unused slots may hold NaN.
        valid = ((pos < length) & (pos >= first)) if masked else None             # bool[block_kv]
        k = _load(k_ref.at[rows[:, None], cols], None if valid is None else valid[:, None])
        v = _load(v_ref.at[rows[:, None], cols], None if valid is None else valid[:, None])
        logits = plgpu.dot(q, k.astype(q.dtype), trans_b=True, precision=precision)  # f32[Gp, blk]
        if k_scale_ref is not None:
            logits *= _load(k_scale_ref.at[page, h], valid)[None, :]
        logits = _scaled_log2(logits, scale, soft_cap)
        if masked:
            logits = jnp.where(valid[None, :], logits, MASK_VALUE)
        m_new = jnp.maximum(m, logits.max(axis=1))
        p = jnp.exp2(logits - m_new[:, None])
        if masked:
            p = jnp.where(valid[None, :], p, 0.0)
        alpha = jnp.exp2(m - m_new)
        l = alpha * l + p.sum(axis=1)
        if v_scale_ref is not None:
            p *= _load(v_scale_ref.at[page, h], valid)[None, :]
        pv = plgpu.dot(p.astype(q.dtype), v.astype(q.dtype), precision=precision)
        return alpha[:, None] * acc + pv, m_new, l

    # Blocks wholly inside [first, length) need no masks; only a window's first block and the
    # sequence's last block can be partial, so at most two of a split's blocks take the masked body.
    full_lo = lo if sliding_window is None else jnp.clip(pl.cdiv(first, block_kv), lo, hi)
    full_hi = jnp.clip(length // block_kv, full_lo, hi)
    carry = (jnp.zeros((gp, head_dim), jnp.float32), jnp.full((gp,), MASK_VALUE, jnp.float32),
             jnp.zeros((gp,), jnp.float32))
    masked, unmasked = (functools.partial(body, masked=x) for x in (True, False))
    if sliding_window is not None:
        carry = jax.lax.fori_loop(lo, full_lo, masked, carry)
    carry = jax.lax.fori_loop(full_lo, full_hi, unmasked, carry)
    acc, m, l = jax.lax.fori_loop(full_hi, hi, masked, carry)
    safe_l = jnp.where(l > 0, l, 1.0)
    o_ref[...] = jnp.where(l[:, None] > 0, acc / safe_l[:, None], 0.0).astype(o_ref.dtype)
    if m_ref is not None:
        m_ref[...] = m
        l_ref[...] = l


def _load(view, mask):
    """A load, masked (zeros where mask is False) only when a mask is given."""
    return plgpu.load(view) if mask is None else plgpu.load(view, mask=mask, other=0)


def _scaled_log2(logits, scale: float, soft_cap: float | None):
    """Scaled (and soft-capped) logits times log2(e), so the softmax can use exp2, which is one
    hardware instruction where exp is a libdevice call."""
    if soft_cap is None:
        return logits * (scale * LOG2E)
    return (soft_cap * LOG2E) * jnp.tanh(logits * (scale / soft_cap))


def _check_triton(q, k_pages) -> None:
    num_pages, page_size, num_kv_heads, head_dim = k_pages.shape
    if head_dim < _MIN_DOT or head_dim & (head_dim - 1):
        raise ValueError(f"the Triton kernels need head_dim a power of two >= 16; got k_pages {k_pages.shape}")
    if page_size & (page_size - 1):
        raise ValueError(f"the Triton kernels need page_size a power of two; got k_pages {k_pages.shape}")
    if num_pages * page_size * num_kv_heads * head_dim >= 2**31:
        raise ValueError(f"the Triton kernels index the pool with int32 offsets; k_pages {k_pages.shape} "
                         "has 2**31 elements or more")


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.partial(jax.jit, static_argnames=("scale", "soft_cap", "sliding_window", "interpret",
                                             "block_kv", "num_splits", "num_warps", "num_stages",
                                             "heads_fastest"))
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
    block_kv: int | None = None,
    num_splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    heads_fastest: bool | None = None,
) -> jax.Array:
    """Paged decode attention on GPU; arguments and result as in reference.paged_decode_attention.

    block_kv, num_splits, num_warps, num_stages, heads_fastest override block_sizes.py (tuning).
    """
    check_pages(q, k_pages, v_pages, block_tables, k_scales, v_scales)
    check_options(soft_cap, sliding_window)
    _check_triton(q, k_pages)
    batch, num_heads, head_dim = q.shape
    num_pages, page_size, num_kv_heads, _ = k_pages.shape
    group = num_heads // num_kv_heads
    scale = default_scale(scale, head_dim)
    sizes = block_sizes.triton_block_sizes(head_dim, jnp.dtype(k_pages.dtype).name)
    block_kv = block_kv or sizes.block_kv
    heads_fastest = sizes.heads_fastest if heads_fastest is None else heads_fastest
    max_blocks = pl.cdiv(block_tables.shape[1] * page_size, block_kv)
    if num_splits is None:
        num_splits = max(1, min(max_blocks, block_sizes.TARGET_PROGRAMS // (batch * num_kv_heads)))

    # int8 pages are dequantized to q's dtype inside the kernel; f32 dots stay exact (no TF32).
    compute_dtype = q.dtype if q.dtype != jnp.float32 else jnp.float32
    precision = jax.lax.Precision.HIGHEST if compute_dtype == jnp.float32 else None
    gp = max(_MIN_DOT, _next_pow2(group))
    qg = q.reshape(batch, num_kv_heads, group, head_dim)
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, gp - group), (0, 0)))
    # Block tables cover every block the loop can touch, so pos // S stays in range.
    padded_pages = pl.cdiv(max_blocks * block_kv, page_size)
    tables = jnp.pad(block_tables.astype(jnp.int32), ((0, 0), (0, padded_pages - block_tables.shape[1])))
    k2 = k_pages.reshape(num_pages * page_size, num_kv_heads * head_dim)
    v2 = v_pages.reshape(num_pages * page_size, num_kv_heads * head_dim)

    # Grid axis 0 is launched fastest. With kv heads there, programs running together read
    # neighbouring 256-byte pieces of the same token rows instead of one head of many sequences.
    if heads_fastest:
        grid = (num_kv_heads, batch, num_splits)
        at = lambda f: lambda h, b, s: f(b, h, s)
    else:
        grid = (batch, num_kv_heads, num_splits)
        at = lambda f: f
    whole = lambda a: pl.BlockSpec(a.shape, at(lambda b, h, s: (0,) * a.ndim))
    split = num_splits > 1
    out_dtype = jnp.float32 if split else q.dtype
    out_shape = [jax.ShapeDtypeStruct((num_splits, batch, num_kv_heads, gp, head_dim), out_dtype)]
    out_specs = [pl.BlockSpec((None, None, None, gp, head_dim), at(lambda b, h, s: (s, b, h, 0, 0)))]
    if split:
        for _ in range(2):
            out_shape.append(jax.ShapeDtypeStruct((num_splits, batch, num_kv_heads, gp), jnp.float32))
            out_specs.append(pl.BlockSpec((None, None, None, gp), at(lambda b, h, s: (s, b, h, 0))))
    kernel = functools.partial(
        _decode_kernel, page_size=page_size, block_kv=block_kv, num_splits=num_splits,
        heads_fastest=heads_fastest, scale=scale, soft_cap=soft_cap, sliding_window=sliding_window,
        precision=precision)
    if not split:
        kernel = functools.partial(lambda f, *refs: f(*refs, None, None), kernel)
    outs = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            whole(lengths),
            pl.BlockSpec((None, padded_pages), at(lambda b, h, s: (b, 0))),
            pl.BlockSpec((None, None, gp, head_dim), at(lambda b, h, s: (b, h, 0, 0))),
            whole(k2), whole(v2),
            None if k_scales is None else whole(k_scales),
            None if v_scales is None else whole(v_scales),
        ],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps or sizes.num_warps,
                                             num_stages=num_stages or sizes.num_stages),
        interpret=interpret,
        name="paged_decode_attention",
    )(lengths.astype(jnp.int32), tables, qg, k2, v2, k_scales, v_scales)

    if split:
        out, m, l = outs
        weight = l * jnp.exp2(m - m.max(axis=0, keepdims=True))         # f32[splits, B, K, Gp]
        total = weight.sum(axis=0)
        out = (weight[..., None] * out).sum(axis=0) / jnp.where(total > 0, total, 1.0)[..., None]
    else:
        out = outs[0][0]
    return out[:, :, :group].reshape(batch, num_heads, head_dim).astype(q.dtype)
