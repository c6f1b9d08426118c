"""Stage 4, filters: top-k, then top-p on what top-k kept, then min-p; on temperature-scaled logits.

No sort of the vocabulary. A sort per row costs O(V log V) and dominates the step at Gemma 3's
262,144 tokens (and `lax.top_k` lowers to a full sort on CPU and, for large k, on GPU). Both
cut-offs are thresholds instead, found by bisection over the 2^32 float values, each step one
pass over the row (32 passes, no data-dependent shapes):

  top-k  kth = the largest t with count(logits >= t) >= k: exactly the k-th largest value.
  top-p  With the sorted probabilities p_(1) >= p_(2) >= ..., the classic rule keeps position j
         while the mass before it is < top_p, then keeps every logit >= the last kept value
         (ties included). The first position of a value v has exactly mass(logits > v) before
         it, so the kept set is {x : mass(logits > x) < top_p}: threshold pth = the smallest
         value with mass(> pth) < top_p, a monotone predicate. The mass is that of the top-k
         multiset (k entries, ties at kth counted up to k), as when softmax runs over the
         first k sorted entries.
  min-p  keeps probs >= min_p * max prob: one softmax pass, no search.

Both searches run over candidates when every filtered row has a small top-k (<= 64, as
llama.cpp's default 40): the row is cut in blocks of 256, and only the 64 blocks with the largest
maxima are searched (16,384 values, not 262,144). Exact: an element above the k-th largest value
lies in a block whose maximum outranks all but fewer than k other blocks, so every such element
and enough copies of the k-th value are among the candidates, and top-p (which only weighs the
top-k multiset) needs nothing else. min-p still reads the whole row, in one pass.

Exact: the same kept set as the sort-based rule (tests/engine/test_sampler_filters.py checks it
against a numpy sort on random logits, ties and extreme values); the only difference is float
summation order, which can move the top-p cut when a cumulative mass equals top_p to the last
bit. Rows with top_p = 1 are not cut at all (the sort's cumulative sum could round past 1 and
drop zero-probability tail tokens).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.sampler.stage import MASKED, PackContext, Stage, in_blocks
from jaxserve.sampler.temperature import sampled_rows

_SEARCH_STEPS = 32   # bisection halvings of the uint32 key range: always lands on one value
CANDIDATE_BLOCK = 256     # values per block when searching candidates only
CANDIDATE_BLOCKS = 64     # blocks kept; also the largest top-k searched among candidates


@functools.partial(jax.tree_util.register_dataclass, data_fields=["top_k", "top_p", "min_p"],
                   meta_fields=["use_top_k", "use_top_p", "use_min_p", "candidate_blocks"])
@dataclass
class FilterArrays:
    top_k: jax.Array   # i32[B]; 0 = off
    top_p: jax.Array   # f32[B]; 1 = off
    min_p: jax.Array   # f32[B]; 0 = off
    use_top_k: bool    # static: any row uses top-k (else that search is not traced)
    use_top_p: bool
    use_min_p: bool
    candidate_blocks: int = 0   # static: search only this many blocks (see candidates); 0 = whole rows


def pack(ctx: PackContext) -> FilterArrays | None:
    """Filters of sampled rows only: a greedy row's argmax is the same with or without them."""
    top_k = np.zeros(ctx.rows, np.int32)
    top_p = np.ones(ctx.rows, np.float32)
    min_p = np.zeros(ctx.rows, np.float32)
    sampled = sampled_rows(ctx)
    for i, s in enumerate(ctx.seqs):
        if sampled[i]:
            p = s.params
            # Any top_k at or past the vocabulary means "all of it" (apply takes min(k, V));
            # clamping first keeps a huge client value from overflowing the int32 row.
            top_k[i] = min(max(p.top_k, 0), np.iinfo(np.int32).max)
            top_p[i], min_p[i] = p.top_p, p.min_p
    flags = bool(np.any(top_k > 0)), bool(np.any(top_p < 1.0)), bool(np.any(min_p > 0))
    if not any(flags):
        return None
    return FilterArrays(top_k, top_p, min_p, *flags, candidate_blocks=candidate_blocks(top_k, top_p))


def candidate_blocks(top_k: np.ndarray, top_p: np.ndarray) -> int:
    """CANDIDATE_BLOCKS when the searches may run over candidates: some row uses top-k, and every
    row either has top-k <= CANDIDATE_BLOCKS or uses neither top-k nor top-p (top-p without
    top-k weighs the whole row)."""
    small = (top_k > 0) & (top_k <= CANDIDATE_BLOCKS)
    unsearched = (top_k == 0) & (top_p >= 1.0)
    return CANDIDATE_BLOCKS if small.any() and (small | unsearched).all() else 0


def candidates(logits: jax.Array, num_blocks: int) -> jax.Array:
    """[B, num_blocks * CANDIDATE_BLOCK]: each row's blocks with the largest maxima (-inf padded)."""
    B = logits.shape[0]
    blocks = in_blocks(logits, CANDIDATE_BLOCK, -jnp.inf)
    _, ids = jax.lax.top_k(jnp.max(blocks, axis=-1), num_blocks)      # a sort of n, not of V
    return jnp.take_along_axis(blocks, ids[:, :, None], axis=1).reshape(B, -1)


def sort_key(x: jax.Array) -> jax.Array:
    """f32 -> u32 whose unsigned order is the float order (negatives: all bits flipped)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def from_sort_key(key: jax.Array) -> jax.Array:
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _last_true(lo: jax.Array, hi: jax.Array, pred) -> jax.Array:
    """Per row, the largest u32 t in [lo, hi] with pred(t) (pred monotone: true then false; pred(lo))."""
    def step(_, bounds):
        lo, hi = bounds
        half = hi - lo
        mid = lo + half // 2 + (half & 1)            # ceil((lo + hi) / 2) without overflow
        ok = pred(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - jnp.where(mid > lo, 1, 0).astype(mid.dtype))
    return jax.lax.fori_loop(0, _SEARCH_STEPS, step, (lo, hi))[0]


def _first_true(lo: jax.Array, hi: jax.Array, pred) -> jax.Array:
    """Per row, the smallest u32 t in [lo, hi] with pred(t) (pred monotone: false then true; pred(hi))."""
    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        return jnp.where(ok, lo, mid + jnp.where(mid < hi, 1, 0).astype(mid.dtype)), jnp.where(ok, mid, hi)
    return jax.lax.fori_loop(0, _SEARCH_STEPS, step, (lo, hi))[1]


def top_k_threshold(logits: jax.Array, keys: jax.Array, k: jax.Array) -> jax.Array:
    """f32[B]: the k-th largest logit of each row (k: i32[B] in [1, V])."""
    lo, hi = jnp.min(keys, axis=-1), jnp.max(keys, axis=-1)
    count_at_least = lambda t: jnp.sum(keys >= t[:, None], axis=-1) >= k
    return from_sort_key(_last_true(lo, hi, count_at_least))


def top_p_threshold(logits: jax.Array, keys: jax.Array, kth: jax.Array, k: jax.Array,
                    top_p: jax.Array) -> jax.Array:
    """f32[B]: the smallest value >= kth whose mass above, within the top-k multiset, is < top_p.

    kth: f32[B] the top-k threshold (the row minimum where top-k is off); k: i32[B] entries kept
    by top-k (V where off).
    """
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - row_max)                                               # f32[B, V]
    above = logits > kth[:, None]
    # k entries: all those above kth, and as many copies of kth as fill up to k.
    num_above = jnp.sum(above, axis=-1)
    z = jnp.sum(jnp.where(above, e, 0.0), axis=-1) + (k - num_above) * jnp.exp(kth - row_max[:, 0])
    probs = e / z[:, None]
    mass_above_below_p = lambda t: jnp.sum(jnp.where(keys > t[:, None], probs, 0.0), axis=-1) < top_p
    return from_sort_key(_first_true(sort_key(kth), jnp.max(keys, axis=-1), mass_above_below_p))


# Jitted on its own too, so eager callers (tests, tools) compile the searches once per shape
# instead of re-tracing their loops on every call; inside the sampler's jit it is inlined.
@jax.jit
def apply(logits: jax.Array, f: FilterArrays) -> jax.Array:
    B, V = logits.shape
    k = jnp.where(f.top_k > 0, jnp.minimum(f.top_k, V), V)
    searched = logits
    if f.candidate_blocks and f.candidate_blocks * CANDIDATE_BLOCK < V:
        searched = candidates(logits, f.candidate_blocks)
        k = jnp.where(f.top_k > 0, k, 1)       # rows without top-k are not searched (see pack)
    keys = sort_key(searched)                                                   # u32[B, V']
    if f.use_top_k:
        kth = top_k_threshold(searched, keys, k)
    else:
        kth = jnp.min(logits, axis=-1)
    threshold = jnp.where(f.top_k > 0, kth, -jnp.inf)
    if f.use_top_p:
        pth = top_p_threshold(searched, keys, kth, k, f.top_p)
        threshold = jnp.where(f.top_p < 1.0, jnp.maximum(threshold, pth), threshold)
    logits = jnp.where(logits < threshold[:, None], MASKED, logits)
    if f.use_min_p:
        probs = jax.nn.softmax(logits, axis=-1)
        keep = probs >= f.min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
        logits = jnp.where(keep, logits, MASKED)
    return logits


STAGE = Stage("filters", pack, apply)
