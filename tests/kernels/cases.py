"""Random inputs for the attention kernels, with every slot that must not be read poisoned.

Pages are scattered through the pool in random order; pages no sequence owns, and the slots past
each sequence's length in its last page, hold NaN (for int8 pools, whose values cannot be NaN,
the scales of unused pages are NaN instead). A stray read then fails a test rather than passing
by luck. Also a dense float64 numpy attention, simple enough to check by eye.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np


@dataclass
class Pool:
    k_pages: np.ndarray                # [P, S, K, D]
    v_pages: np.ndarray                # [P, S, K, D]
    k_scales: np.ndarray | None        # f32[P, K] for int8 pools
    v_scales: np.ndarray | None
    block_tables: np.ndarray           # i32[rows, M]

    def kv_args(self):
        return dict(k_scales=self.k_scales, v_scales=self.v_scales)


def make_pool(rng, lengths, *, num_kv_heads, head_dim, page_size, max_pages, dtype, spare_pages=3):
    """A pool holding len(lengths) sequences with the given token counts, pages shuffled."""
    rows = len(lengths)
    num_pages = rows * max_pages + spare_pages
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    quantized = dtype == "int8"
    if quantized:
        k = rng.integers(-127, 128, shape).astype(np.int8)
        v = rng.integers(-127, 128, shape).astype(np.int8)
        k_scales = rng.uniform(0.5, 1.5, (num_pages, num_kv_heads)).astype(np.float32) / 127
        v_scales = rng.uniform(0.5, 1.5, (num_pages, num_kv_heads)).astype(np.float32) / 127
    else:
        k = rng.standard_normal(shape).astype(np.float32)
        v = rng.standard_normal(shape).astype(np.float32)
        k_scales = v_scales = None

    order = rng.permutation(num_pages)
    block_tables = order[: rows * max_pages].reshape(rows, max_pages).astype(np.int32)
    used = np.zeros(num_pages, bool)
    for row, length in enumerate(lengths):
        n = -(-length // page_size)
        used[block_tables[row, :n]] = True
        if n and length % page_size and not quantized:
            last = block_tables[row, n - 1]
            k[last, length % page_size:] = np.nan
            v[last, length % page_size:] = np.nan
    if quantized:
        k_scales[~used] = np.nan
        v_scales[~used] = np.nan
    else:
        k[~used] = np.nan
        v[~used] = np.nan
    cast = (lambda a: a) if quantized else (lambda a: jnp.asarray(a, dtype))
    return Pool(cast(k), cast(v), k_scales, v_scales, block_tables)


def dense_kv(pool: Pool, row: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """float64[length, K, D] K and V of one sequence, read page by page."""
    k_pages = np.asarray(pool.k_pages, np.float64)
    v_pages = np.asarray(pool.v_pages, np.float64)
    page_size = k_pages.shape[1]
    ks, vs = [], []
    for pos in range(length):
        page = pool.block_tables[row, pos // page_size]
        ks.append(k_pages[page, pos % page_size])
        vs.append(v_pages[page, pos % page_size])
        if pool.k_scales is not None:
            ks[-1] = ks[-1] * pool.k_scales[page][:, None]
            vs[-1] = vs[-1] * pool.v_scales[page][:, None]
    return np.array(ks).reshape(length, *k_pages.shape[2:]), np.array(vs).reshape(length, *k_pages.shape[2:])


def dense_attention(q, k, v, q_pos, *, scale, soft_cap=None, sliding_window=None):
    """float64 attention of queries at positions q_pos over k/v at positions 0..len(k)-1.

    q: [Q, H, D]; k, v: [C, K, D]; returns [Q, H, D].
    """
    q = np.asarray(q, np.float64)
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    for i, pos in enumerate(q_pos):
        lo = 0 if sliding_window is None else max(0, pos - sliding_window + 1)
        for h in range(heads):
            kh, vh = k[lo:pos + 1, h // group], v[lo:pos + 1, h // group]
            logits = kh @ q[i, h] * scale
            if soft_cap is not None:
                logits = soft_cap * np.tanh(logits / soft_cap)
            p = np.exp(logits - logits.max())
            out[i, h] = p @ vh / p.sum()
    return out
