"""The sort-free filters (top-k, top-p, min-p) against a plain numpy sort of the same rule."""
from __future__ import annotations

import numpy as np
import pytest

from jaxserve.sampler import MASKED
from jaxserve.sampler import filters
from jaxserve.sampler.filters import FilterArrays, apply, from_sort_key, sort_key


def reference_filters(logits: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, min_p: np.ndarray) -> np.ndarray:
    """The classic rule, written with a full sort: top-k, top-p on the k kept, then min-p."""
    out = logits.copy()
    V = logits.shape[1]
    for i, row in enumerate(logits):
        order = np.sort(row)[::-1]                                   # descending
        k = min(top_k[i], V) if top_k[i] > 0 else V
        kth = order[k - 1]
        kept = order[:k].astype(np.float64)
        probs = np.exp(kept - kept[0])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        threshold = kth if top_k[i] > 0 else -np.inf
        if top_p[i] < 1.0:
            num_keep = int(np.sum(before < top_p[i]))
            threshold = max(threshold, order[num_keep - 1])
        out[i] = np.where(row < threshold, MASKED, row)
        if min_p[i] > 0:
            p = np.exp(out[i].astype(np.float64) - out[i].max())
            p /= p.sum()
            out[i] = np.where(p >= min_p[i] * p.max(), out[i], MASKED)
    return out


def _rows(rng, B, V, kind):
    x = rng.normal(scale=3.0, size=(B, V))
    if kind == "ties":            # few distinct values: cut-offs fall inside runs of equal logits
        x = np.round(x)
    elif kind == "extreme":       # huge spread, masked entries, -inf and exact duplicates of the max
        x = x * 1e3
        x[:, ::7] = MASKED
        x[:, 3::11] = -np.inf
        x[:, 1] = x[:, 0] = x.max(axis=1)
    elif kind == "flat":          # all equal: every filter keeps everything or ties decide
        x = np.zeros((B, V))
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["normal", "ties", "extreme", "flat"])
def test_filters_match_the_sorting_reference(kind):
    rng = np.random.default_rng({"normal": 0, "ties": 1, "extreme": 2, "flat": 3}[kind])
    B, V = 48, 257
    logits = _rows(rng, B, V, kind)
    top_k = rng.choice([0, 1, 2, 7, 40, V, V + 5], size=B).astype(np.int32)
    top_p = rng.choice([1.0, 0.95, 0.8, 0.37, 1e-6], size=B).astype(np.float32)
    min_p = rng.choice([0.0, 0.0, 0.05, 0.3], size=B).astype(np.float32)
    f = FilterArrays(top_k, top_p, min_p, True, True, True)
    got = np.asarray(apply(logits, f))
    want = reference_filters(logits, top_k, top_p, min_p)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("only", ["top_k", "top_p", "min_p"])
def test_each_filter_alone_matches_the_reference(only):
    rng = np.random.default_rng(7)
    B, V = 16, 1000
    logits = _rows(rng, B, V, "normal")
    top_k = rng.integers(1, 60, size=B).astype(np.int32) if only == "top_k" else np.zeros(B, np.int32)
    top_p = rng.uniform(0.05, 0.99, size=B).astype(np.float32) if only == "top_p" else np.ones(B, np.float32)
    min_p = rng.uniform(0.01, 0.5, size=B).astype(np.float32) if only == "min_p" else np.zeros(B, np.float32)
    f = FilterArrays(top_k, top_p, min_p, only == "top_k", only == "top_p", only == "min_p")
    got = np.asarray(apply(logits, f))
    np.testing.assert_array_equal(got, reference_filters(logits, top_k, top_p, min_p))
    kept = (got > MASKED).sum(axis=1)
    assert kept.min() >= 1 and kept.max() < V   # each filter did cut, and never everything


def test_sort_key_orders_like_floats_and_round_trips():
    x = np.array([-np.inf, MASKED, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 3e38, np.inf], np.float32)
    keys = np.asarray(sort_key(x)).astype(np.uint64)
    assert np.all(np.diff(keys) >= 0) and np.all(np.diff(keys)[[0, 1, 2, 3, 5, 6, 7, 8]] > 0)
    np.testing.assert_array_equal(np.asarray(from_sort_key(sort_key(x))).view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("kind", ["normal", "ties", "extreme", "flat"])
def test_searching_candidate_blocks_only_gives_the_same_cut(kind):
    """Rows long enough that only 64 of their blocks of 256 are searched (V not a multiple of 256)."""
    rng = np.random.default_rng({"normal": 10, "ties": 11, "extreme": 12, "flat": 13}[kind])
    B, V = 12, 64 * 256 + 3000
    logits = _rows(rng, B, V, kind)
    top_k = rng.choice([1, 2, 7, 40, 64], size=B).astype(np.int32)
    top_p = rng.choice([1.0, 0.95, 0.8, 0.37, 1e-6], size=B).astype(np.float32)
    top_k[0], top_p[0] = 0, 1.0             # a sampled row that uses neither
    min_p = rng.choice([0.0, 0.05], size=B).astype(np.float32)
    assert filters.candidate_blocks(top_k, top_p) == filters.CANDIDATE_BLOCKS
    f = FilterArrays(top_k, top_p, min_p, True, True, True, candidate_blocks=filters.CANDIDATE_BLOCKS)
    np.testing.assert_array_equal(np.asarray(apply(logits, f)), reference_filters(logits, top_k, top_p, min_p))


def test_rows_needing_the_whole_row_turn_candidate_search_off():
    k, p = np.array([40, 0], np.int32), np.array([0.9, 0.9], np.float32)
    assert filters.candidate_blocks(k, p) == 0                      # top-p without top-k
    assert filters.candidate_blocks(np.array([40, 65], np.int32), np.ones(2, np.float32)) == 0
    assert filters.candidate_blocks(np.zeros(2, np.int32), p) == 0   # no top-k at all
    assert filters.candidate_blocks(np.array([40, 0], np.int32), np.array([0.9, 1.0], np.float32)) > 0
