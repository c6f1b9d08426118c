"""Paged decode kernels vs the reference, over edge lengths, GQA ratios, dtypes and options."""
from __future__ import annotations

import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.paged_decode import reference
from tests.kernels.cases import TOLERANCE, AttentionCase, decode_args, random_case
from tests.kernels.conftest import KERNEL_MODES

# Lengths: padding row, one token, exactly one page, page + 1, a sequence leaving pages unused.
EDGES = ((1, 0), (1, 1), (1, 16), (1, 17), (1, 40), (1, 3))
CASES = [
    AttentionCase("f32-gqa1-d64", EDGES, 2, 2, 64, 16, 4, "float32"),
    AttentionCase("bf16-gqa3-d128", EDGES, 6, 2, 128, 8, 6, "bfloat16", "bfloat16", seed=1),
    AttentionCase("f32-gqa8-d64-capped-window", EDGES, 8, 1, 64, 16, 4, "float32",
                  options=(("soft_cap", 5.0), ("sliding_window", 7)), seed=2),
    AttentionCase("int8-bf16q-gqa3-d64", EDGES, 3, 1, 64, 16, 4, "int8", "bfloat16", seed=3),
    AttentionCase("int8-f32q-gqa1-d128-window", EDGES, 2, 2, 128, 8, 6, "int8",
                  options=(("sliding_window", 20), ("scale", 0.05)), seed=4),
    AttentionCase("f32-one-page-each", ((1, 1), (1, 4), (1, 2)), 4, 2, 64, 4, 1, "float32", seed=5),
] + [random_case(seed, decode=True) for seed in range(3)]


@pytest.mark.parametrize("impl,interpret", KERNEL_MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_paged_decode_matches_reference(impl, interpret, case):
    args, kwargs = decode_args(case)
    out = pallas_kernels.paged_decode_attention(*args, **kwargs, impl=impl, interpret=interpret)
    ref = reference.paged_decode_attention(*args, **kwargs)
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert np.isfinite(out).all(), "NaN from an unused page or slot leaked into the output"
    np.testing.assert_allclose(out, ref, **TOLERANCE[case.q_dtype])
    lengths = np.asarray(args[4])
    np.testing.assert_array_equal(out[lengths == 0], 0)


@pytest.mark.parametrize("interpret", [True, pytest.param(False, marks=pytest.mark.gpu)])
@pytest.mark.parametrize("num_splits,heads_fastest", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4]], ids=str)
def test_triton_decode_options_agree(interpret, num_splits, heads_fastest, case):
    """Splits, grid order and blocks smaller than a page (windows start mid-block) all agree."""
    from pallas_kernels.paged_decode import triton
    args, kwargs = decode_args(case)
    out = triton.paged_decode_attention(*args, **kwargs, num_splits=num_splits, block_kv=16,
                                        heads_fastest=heads_fastest, interpret=interpret)
    ref = reference.paged_decode_attention(*args, **kwargs)
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.asarray(ref, np.float32), **TOLERANCE[case.q_dtype])


@pytest.mark.parametrize("kv_block_tokens", [1, 16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_xla_decode_blocks_smaller_than_table(kv_block_tokens, case):
    """One or a few pages per loop step: the online softmax carries across blocks, and the loop
    stops at the longest row (later blocks hold NaN and must not be read into the result)."""
    from pallas_kernels.paged_decode import xla
    args, kwargs = decode_args(case)
    out = xla.paged_decode_attention(*args, **kwargs, kv_block_tokens=kv_block_tokens)
    ref = reference.paged_decode_attention(*args, **kwargs)
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.asarray(ref, np.float32), **TOLERANCE[case.q_dtype])
