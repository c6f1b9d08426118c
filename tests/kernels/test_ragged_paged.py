"""The one ragged interface of a mixed step vs its reference: decode rows, verify rows, chunks
after cached prefixes and whole prompts, padding sequences and padding tokens, in one batch,
over pools whose unused pages and slots are NaN."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.ragged_paged import reference
from tests.kernels.cases import (TOLERANCE, AttentionCase, chunk_kv, dense_attention, dense_kv,
                                 make_pool, prefill_args)
from tests.kernels.conftest import KERNEL_MODES

# (q_len, kv_len) per sequence; the first NUM_SHORT of each are the short (decode / verify) rows.
# Decodes: one query each, a padding decode row being (1, 0). Verifies: k + 1 queries, or one
# (a plain decode beside them), padding (0, 0). Then chunks: after a prefix spanning pages, a
# whole prompt, a one-token chunk, a padding chunk.
DECODE_MIX = ((1, 9), (1, 17), (1, 1), (1, 0), (5, 29), (17, 17), (1, 9), (0, 0))
VERIFY_MIX = ((4, 20), (1, 8), (3, 33), (0, 0), (6, 30), (8, 8), (0, 0))
DECODE_ONLY = ((1, 12), (1, 33), (1, 0), (1, 0))
PREFILL_ONLY = ((17, 17), (5, 29), (0, 0))
MIXES = {  # name: (seqs, num_short, short_q_len)
    "decode+chunks": (DECODE_MIX, 4, 1),
    "verify+chunks": (VERIFY_MIX, 4, 4),
    "decode-only": (DECODE_ONLY, 4, 1),
    "verify-only": (VERIFY_MIX[:4], 4, 4),
    "chunks-only": (PREFILL_ONLY, 0, 1),
}
DTYPES = [  # heads, kv_heads, head_dim, page_size, max_pages, kv_dtype, q_dtype, options
    (2, 2, 64, 8, 5, "float32", "float32", ()),
    (3, 1, 128, 16, 3, "bfloat16", "bfloat16", ()),
    (8, 1, 64, 8, 5, "float32", "float32", (("soft_cap", 5.0), ("sliding_window", 6))),
    (6, 2, 64, 8, 5, "int8", "bfloat16", ()),
    (6, 2, 64, 16, 3, "bfloat16", "float32", ()),   # jaxserve's CPU config: bf16 cache, f32 model
]
CASES = [(name, AttentionCase(f"{name}-{d[5]}-{d[6]}-h{d[0]}k{d[1]}" + ("-opts" if d[7] else ""),
                              seqs, *d[:7], options=d[7], seed=i * 10 + j), num_short, short_q)
         for i, (name, (seqs, num_short, short_q)) in enumerate(MIXES.items())
         for j, d in enumerate(DTYPES)]


def _args(case: AttentionCase, num_short: int, short_q_len: int):
    # The packer's layout: room for num_short * short_q_len short queries before the long ones.
    short_tokens = sum(ql for ql, _ in case.seqs[:num_short])
    args, kwargs = prefill_args(case, padding_tokens=3 + num_short * short_q_len - short_tokens)
    long_q = [ql for ql, _ in case.seqs[num_short:]]
    kwargs.update(num_short_seqs=num_short, short_q_len=short_q_len,
                  max_q_len=max(long_q + [1]))
    return args, kwargs


def _jit(fn, kwargs, **static):
    """fn jitted with its options bound (eager, every small op would compile on its own)."""
    return jax.jit(functools.partial(fn, **kwargs, **static))


@pytest.mark.parametrize("impl,interpret", KERNEL_MODES)
@pytest.mark.parametrize("name,case,num_short,short_q_len", CASES, ids=[c[1].name for c in CASES])
def test_ragged_paged_matches_reference(impl, interpret, name, case, num_short, short_q_len):
    args, kwargs = _args(case, num_short, short_q_len)
    out = _jit(pallas_kernels.ragged_paged_attention, kwargs, impl=impl, interpret=interpret)(*args)
    ref = _jit(reference.ragged_paged_attention, kwargs)(*args)
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert np.isfinite(out).all(), "NaN from an unused page or slot leaked into the output"
    np.testing.assert_allclose(out, ref, **TOLERANCE[case.q_dtype])
    np.testing.assert_array_equal(out[int(args[4][-1]):], 0)   # padding tokens


@pytest.mark.parametrize("name,case,num_short,short_q_len", CASES[:: len(DTYPES)],
                         ids=[c[1].name for c in CASES[:: len(DTYPES)]])
def test_xla_reads_fresh_chunks_from_the_steps_kv(name, case, num_short, short_q_len):
    """Given the step's own K/V (as the model passes them), the xla backend still agrees."""
    args, kwargs = _args(case, num_short, short_q_len)
    k_new, v_new = chunk_kv(args)
    out = _jit(pallas_kernels.ragged_paged_attention, kwargs, impl="xla")(*args, k_new=k_new, v_new=v_new)
    ref = _jit(reference.ragged_paged_attention, kwargs)(*args)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **TOLERANCE[case.q_dtype])


def test_reference_is_causal_attention_per_row():
    """The spec itself, against float64 attention written out per query, on a mixed batch."""
    case = CASES[0][1]
    args, kwargs = _args(case, 4, 1)
    out = np.asarray(reference.ragged_paged_attention(*args, **kwargs), np.float64)
    rng = np.random.default_rng(case.seed)
    pool = make_pool(rng, [kv for _, kv in case.seqs], num_kv_heads=case.kv_heads,
                     head_dim=case.head_dim, page_size=case.page_size, max_pages=case.max_pages,
                     dtype=case.kv_dtype)
    cu = np.asarray(args[4])
    for n, (q_len, kv_len) in enumerate(case.seqs):
        rows = slice(cu[n], cu[n] + q_len)
        if kv_len == 0:
            np.testing.assert_array_equal(out[rows], 0)
            continue
        k, v = dense_kv(pool, n, kv_len)
        want = dense_attention(np.asarray(args[0])[rows], k, v, range(kv_len - q_len, kv_len),
                               scale=case.head_dim ** -0.5)
        np.testing.assert_allclose(out[rows], want, rtol=1e-5, atol=1e-5)


def test_split_that_does_not_fit_is_refused():
    case = CASES[0][1]
    args, kwargs = _args(case, 4, 1)
    with pytest.raises(ValueError, match="num_short_seqs"):
        reference.ragged_paged_attention(*args, **dict(kwargs, num_short_seqs=99))
    with pytest.raises(ValueError, match="do not fit"):
        reference.ragged_paged_attention(*args, **dict(kwargs, short_q_len=64))
