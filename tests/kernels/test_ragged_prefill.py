"""Ragged prefill kernels vs the reference: whole prompts, chunks after a cached prefix,
one-token chunks, padding sequences and tokens, GQA ratios, dtypes and options."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.ragged_prefill import reference
from tests.kernels.cases import TOLERANCE, AttentionCase, chunk_kv, prefill_args, random_case
from tests.kernels.conftest import KERNEL_MODES

# (q_len, kv_len): whole prompt of one page + 1, chunk after a cached prefix spanning pages,
# a one-token chunk, a chunk of exactly one page, a padding sequence.
SEQS = ((17, 17), (5, 29), (1, 9), (8, 8), (0, 0))
CASES = [
    AttentionCase("f32-gqa1-d64", SEQS, 2, 2, 64, 8, 4, "float32"),
    AttentionCase("bf16-gqa3-d128", SEQS, 3, 1, 128, 16, 2, "bfloat16", "bfloat16", seed=1),
    AttentionCase("f32-gqa8-d64-capped-window", SEQS, 8, 1, 64, 8, 4, "float32",
                  options=(("soft_cap", 5.0), ("sliding_window", 6)), seed=2),
    AttentionCase("int8-bf16q-gqa3-d64", SEQS, 6, 2, 64, 8, 4, "int8", "bfloat16", seed=3),
    AttentionCase("int8-f32q-gqa1-d128-window", SEQS, 1, 1, 128, 16, 2, "int8",
                  options=(("sliding_window", 11), ("scale", 0.05)), seed=4),
    AttentionCase("f32-single-token", ((1, 1),), 4, 2, 64, 4, 1, "float32", seed=5),
    # bf16 cache under an f32 model (jaxserve's CPU config), chunks longer than a page.
    AttentionCase("bf16kv-f32q-gqa3-long", ((40, 40), (20, 50), (1, 9)), 6, 2, 64, 16, 4,
                  "bfloat16", "float32", seed=6),
] + [random_case(seed, decode=False) for seed in range(3)]


@pytest.mark.parametrize("impl,interpret", KERNEL_MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_ragged_prefill_matches_reference(impl, interpret, case):
    args, kwargs = prefill_args(case)
    out = pallas_kernels.ragged_prefill_attention(*args, **kwargs, impl=impl, interpret=interpret)
    ref = reference.ragged_prefill_attention(*args, **kwargs)
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert np.isfinite(out).all(), "NaN from an unused page or slot leaked into the output"
    np.testing.assert_allclose(out, ref, **TOLERANCE[case.q_dtype])
    num_real = int(args[4][-1])
    np.testing.assert_array_equal(out[num_real:], 0)


@pytest.mark.parametrize("interpret", [True, pytest.param(False, marks=pytest.mark.gpu)])
def test_triton_prefill_small_blocks_cross_pages(interpret):
    """Blocks smaller than a page, and query blocks that split a chunk, still agree."""
    from pallas_kernels.ragged_prefill import triton
    case = CASES[0]
    args, kwargs = prefill_args(case)
    out = triton.ragged_prefill_attention(*args, **kwargs, block_q=16, block_kv=16,
                                          interpret=interpret)
    ref = reference.ragged_prefill_attention(*args, **kwargs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **TOLERANCE["float32"])


@pytest.mark.parametrize("kv_block_tokens,q_block", [(1, 4), (16, 3), (8, 128)])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_xla_prefill_blocks_cross_pages_and_chunks(kv_block_tokens, q_block, case):
    """Key blocks of one page, query blocks that split chunks unevenly: each query block stops
    at its own diagonal and the result still equals the reference."""
    from pallas_kernels.ragged_prefill import xla
    args, kwargs = prefill_args(case)
    out = xla.ragged_prefill_attention(*args, **kwargs, kv_block_tokens=kv_block_tokens,
                                       q_block=q_block)
    ref = reference.ragged_prefill_attention(*args, **kwargs)
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.asarray(ref, np.float32), **TOLERANCE[case.q_dtype])
    np.testing.assert_array_equal(out[int(args[4][-1]):], 0)


# Lone chunks with no cached prefix: the xla backend reads these from k_new/v_new, not the pages.
FRESH_CASES = [
    AttentionCase("fresh-f32-gqa3", ((37, 37),), 6, 2, 64, 8, 6, "float32", seed=7),
    AttentionCase("fresh-bf16kv-f32q-gqa3", ((40, 40),), 9, 3, 64, 16, 3, "bfloat16", seed=8),
    AttentionCase("fresh-bf16-one-token", ((1, 1),), 4, 1, 128, 4, 1, "bfloat16", "bfloat16", seed=9),
]


@pytest.mark.parametrize("q_block", [4, 128])
@pytest.mark.parametrize("case", FRESH_CASES, ids=str)
def test_xla_prefill_fresh_chunk_reads_the_steps_kv_not_pages(q_block, case):
    """With the pages all NaN, the result still equals the reference on the real pages: the
    chunk's keys and values came from k_new/v_new, and only up to each query's diagonal."""
    from pallas_kernels.ragged_prefill import xla
    args, kwargs = prefill_args(case)
    k_new, v_new = chunk_kv(args)
    ref = np.asarray(reference.ragged_prefill_attention(*args, **kwargs), np.float32)
    nan_pages = jnp.full(args[1].shape, jnp.nan, args[1].dtype)
    out = xla.ragged_prefill_attention(args[0], nan_pages, nan_pages, *args[3:], **kwargs,
                                       q_block=q_block, k_new=k_new, v_new=v_new)
    out = np.asarray(out, np.float32)
    np.testing.assert_allclose(out, ref, **TOLERANCE[case.q_dtype])
    np.testing.assert_array_equal(out[int(args[4][-1]):], 0)


def test_xla_prefill_fresh_chunk_rounds_to_the_pool_dtype():
    """k_new/v_new in f32 beside a bf16 pool: the fresh path rounds them as the pages were
    rounded, so it gives the reference's result on those pages (not a more exact one)."""
    from pallas_kernels.ragged_prefill import xla
    case = FRESH_CASES[1]
    args, kwargs = prefill_args(case)
    k_new, v_new = chunk_kv(args)
    nudge = lambda x: x * np.float32(1 + 2e-4)      # well below bf16's half-ulp (2**-9)
    ref = np.asarray(reference.ragged_prefill_attention(*args, **kwargs), np.float32)
    out = xla.ragged_prefill_attention(*args, **kwargs, k_new=nudge(k_new), v_new=nudge(v_new))
    # Unrounded, the nudge would move outputs by ~1e-4, five times this tolerance.
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, **TOLERANCE["float32"])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_xla_prefill_given_the_steps_kv_still_matches_reference(case):
    """Chunks after a cached prefix, several sequences, windows, caps and int8 pools take the
    paged path even when the step's K/V are offered; lone fresh chunks take the fresh one."""
    from pallas_kernels.ragged_prefill import xla
    args, kwargs = prefill_args(case)
    k_new, v_new = chunk_kv(args)
    out = np.asarray(xla.ragged_prefill_attention(*args, **kwargs, k_new=k_new, v_new=v_new),
                     np.float32)
    ref = np.asarray(reference.ragged_prefill_attention(*args, **kwargs), np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, **TOLERANCE[case.q_dtype])
