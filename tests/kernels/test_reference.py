"""The references against dense float64 numpy attention: the spec checked by eye."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.paged_decode import reference as decode_ref
from pallas_kernels.ragged_prefill import reference as prefill_ref
from tests.kernels.cases import dense_attention, dense_kv, make_pool

OPTIONS = [dict(), dict(soft_cap=5.0), dict(sliding_window=5), dict(scale=0.3, soft_cap=2.0, sliding_window=9)]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_decode_reference_matches_dense(options, dtype):
    rng = np.random.default_rng(0)
    lengths = [0, 1, 4, 5, 9, 16]                    # padding, one token, one page, page+1, full
    heads, kv_heads, head_dim, page_size = 6, 2, 16, 4
    pool = make_pool(rng, lengths, num_kv_heads=kv_heads, head_dim=head_dim, page_size=page_size,
                     max_pages=4, dtype=dtype)
    q = rng.standard_normal((len(lengths), heads, head_dim)).astype(np.float32)
    fn = jax.jit(lambda *a: decode_ref.paged_decode_attention(*a, **options, **pool.kv_args()))
    out = np.asarray(fn(q, pool.k_pages, pool.v_pages, pool.block_tables, np.array(lengths, np.int32)))
    scale = options.get("scale", 1 / math.sqrt(head_dim))
    for row, length in enumerate(lengths):
        if length == 0:
            np.testing.assert_array_equal(out[row], 0)
            continue
        k, v = dense_kv(pool, row, length)
        want = dense_attention(q[row:row + 1], k, v, [length - 1], scale=scale,
                               soft_cap=options.get("soft_cap"), sliding_window=options.get("sliding_window"))
        np.testing.assert_allclose(out[row], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_prefill_reference_matches_dense(options, dtype):
    rng = np.random.default_rng(1)
    # (q_len, kv_len): whole prompt, chunk after a cached prefix, one token, padding sequence.
    seqs = [(7, 7), (3, 11), (1, 5), (4, 4), (0, 0)]
    heads, kv_heads, head_dim, page_size, max_q_len = 3, 1, 16, 4, 8
    pool = make_pool(rng, [kv for _, kv in seqs], num_kv_heads=kv_heads, head_dim=head_dim,
                     page_size=page_size, max_pages=3, dtype=dtype)
    cu = np.concatenate([[0], np.cumsum([ql for ql, _ in seqs])]).astype(np.int32)
    num_tokens = int(cu[-1]) + 3                      # three padding tokens at the end
    q = rng.standard_normal((num_tokens, heads, head_dim)).astype(np.float32)
    kv_lens = np.array([kv for _, kv in seqs], np.int32)
    fn = jax.jit(lambda *a: prefill_ref.ragged_prefill_attention(
        *a, max_q_len=max_q_len, **options, **pool.kv_args()))
    out = np.asarray(fn(q, pool.k_pages, pool.v_pages, pool.block_tables, cu, kv_lens))
    scale = options.get("scale", 1 / math.sqrt(head_dim))
    for n, (q_len, kv_len) in enumerate(seqs):
        if q_len == 0:
            continue
        k, v = dense_kv(pool, n, kv_len)
        q_pos = [kv_len - q_len + i for i in range(q_len)]
        want = dense_attention(q[cu[n]:cu[n + 1]], k, v, q_pos, scale=scale,
                               soft_cap=options.get("soft_cap"), sliding_window=options.get("sliding_window"))
        np.testing.assert_allclose(out[cu[n]:cu[n + 1]], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[cu[-1]:], 0)


@pytest.mark.cpu
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU backend's choice")
def test_dispatch_auto_on_cpu_is_xla_and_forced_gpu_raises():
    from pallas_kernels import dispatch
    assert dispatch.choose_impl("auto") == "xla"
    assert dispatch.choose_impl("reference") == "reference"
    with pytest.raises(RuntimeError, match="triton"):
        dispatch.choose_impl("triton")
    with pytest.raises(ValueError, match="impl"):
        dispatch.choose_impl("cuda")


def test_public_functions_jit_with_traced_arrays():
    import pallas_kernels as pk
    rng = np.random.default_rng(2)
    pool = make_pool(rng, [5, 3], num_kv_heads=1, head_dim=16, page_size=4, max_pages=2, dtype="float32")
    q = jnp.asarray(rng.standard_normal((2, 2, 16)), jnp.float32)
    out = jax.jit(pk.paged_decode_attention)(q, pool.k_pages, pool.v_pages, pool.block_tables,
                                              jnp.array([5, 3], jnp.int32))
    assert out.shape == (2, 2, 16) and np.isfinite(np.asarray(out)).all()
    cu = jnp.array([0, 2, 3], jnp.int32)
    out = jax.jit(pk.ragged_prefill_attention, static_argnames="max_q_len")(
        q, pool.k_pages, pool.v_pages, pool.block_tables, cu, jnp.array([5, 3], jnp.int32), max_q_len=2)
    assert out.shape == (2, 2, 16) and np.isfinite(np.asarray(out)).all()
