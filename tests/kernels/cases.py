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


# Kernel-vs-reference tolerances, keyed by the query (compute) dtype. f32 kernels use exact
# (non-TF32) dots, so they agree with the f32 reference to rounding; bf16 kernels round the
# probabilities to bf16 before the PV product, as flash kernels do.
TOLERANCE = {
    "float32": dict(rtol=2e-5, atol=2e-5),
    "bfloat16": dict(rtol=2e-2, atol=2e-2),
}


@dataclass(frozen=True)
class AttentionCase:
    """Shapes and options of one kernel test; `seqs` is (q_len, kv_len) per sequence."""
    name: str
    seqs: tuple[tuple[int, int], ...]
    heads: int
    kv_heads: int
    head_dim: int
    page_size: int
    max_pages: int
    kv_dtype: str                 # float32 | bfloat16 | int8
    q_dtype: str = "float32"
    options: tuple = ()           # (name, value) pairs: scale, soft_cap, sliding_window
    seed: int = 0

    def __str__(self):
        return self.name


def random_case(seed: int, *, decode: bool) -> AttentionCase:
    """Random shapes within the kernels' rules (powers of two for D and S)."""
    rng = np.random.default_rng(1000 + seed)
    kv_heads = int(rng.choice([1, 2]))
    group = int(rng.choice([1, 3, 8]))
    page_size = int(rng.choice([4, 8, 16]))
    max_pages = int(rng.integers(1, 5))
    seqs = []
    for _ in range(int(rng.integers(1, 5))):
        kv_len = int(rng.integers(0, page_size * max_pages + 1))
        q_len = min(kv_len, 1 if decode else int(rng.integers(1, 20)))
        seqs.append((q_len, kv_len))
    kv_dtype = str(rng.choice(["float32", "bfloat16", "int8"]))
    q_dtype = "bfloat16" if kv_dtype == "bfloat16" else str(rng.choice(["float32", "bfloat16"]))
    options = (("soft_cap", 4.0),) if rng.random() < 0.3 else ()
    if rng.random() < 0.3:
        options += (("sliding_window", int(rng.integers(1, 20))),)
    return AttentionCase(f"random{seed}", tuple(seqs), kv_heads * group, kv_heads,
                         int(rng.choice([64, 128])), page_size, max_pages, kv_dtype, q_dtype,
                         options, seed)


def decode_args(case: AttentionCase):
    """(args, kwargs) for paged_decode_attention, from a case whose q_lens are ignored."""
    rng = np.random.default_rng(case.seed)
    lengths = [kv for _, kv in case.seqs]
    pool = make_pool(rng, lengths, num_kv_heads=case.kv_heads, head_dim=case.head_dim,
                     page_size=case.page_size, max_pages=case.max_pages, dtype=case.kv_dtype)
    q = jnp.asarray(rng.standard_normal((len(lengths), case.heads, case.head_dim)), case.q_dtype)
    args = (q, pool.k_pages, pool.v_pages, jnp.asarray(pool.block_tables), jnp.asarray(lengths, jnp.int32))
    return args, dict(pool.kv_args(), **dict(case.options))


def prefill_args(case: AttentionCase, padding_tokens: int = 3):
    """(args, kwargs) for ragged_prefill_attention, with padding tokens after the last chunk."""
    rng = np.random.default_rng(case.seed)
    pool = make_pool(rng, [kv for _, kv in case.seqs], num_kv_heads=case.kv_heads,
                     head_dim=case.head_dim, page_size=case.page_size, max_pages=case.max_pages,
                     dtype=case.kv_dtype)
    q_lens = [ql for ql, _ in case.seqs]
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = jnp.asarray(rng.standard_normal((int(cu[-1]) + padding_tokens, case.heads, case.head_dim)),
                    case.q_dtype)
    kv_lens = jnp.asarray([kv for _, kv in case.seqs], jnp.int32)
    args = (q, pool.k_pages, pool.v_pages, jnp.asarray(pool.block_tables), jnp.asarray(cu), kv_lens)
    kwargs = dict(pool.kv_args(), max_q_len=max(max(q_lens), 1), **dict(case.options))
    return args, kwargs


def chunk_kv(args) -> tuple[np.ndarray, np.ndarray]:
    """f32[T, K, D] K and V of each prefill row (the step's own K/V), read back from the pages;
    padding rows get random finite values, as a padded step computes for them."""
    q, k_pages, v_pages, block_tables, cu, kv_lens = args
    k_pages, v_pages = np.asarray(k_pages, np.float32), np.asarray(v_pages, np.float32)
    block_tables, cu, kv_lens = np.asarray(block_tables), np.asarray(cu), np.asarray(kv_lens)
    num_tokens = q.shape[0]
    page_size = k_pages.shape[1]
    rng = np.random.default_rng(0)
    k = rng.standard_normal((num_tokens, *k_pages.shape[2:])).astype(np.float32)
    v = rng.standard_normal(k.shape).astype(np.float32)
    for n in range(len(kv_lens)):
        first = kv_lens[n] - (cu[n + 1] - cu[n])           # position of the chunk's first token
        for row in range(cu[n], cu[n + 1]):
            pos = first + row - cu[n]
            page = block_tables[n, pos // page_size]
            k[row], v[row] = k_pages[page, pos % page_size], v_pages[page, pos % page_size]
    return k, v
