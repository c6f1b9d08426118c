"""Pools of bfloat16 held as their uint16 bits (how jaxserve stores bf16 KV caches on a CPU, see
pallas_kernels.common.bf16_view) give every kernel exactly what the bf16 pools give it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.common import BF16_BITS
from tests.kernels.cases import AttentionCase, decode_args, prefill_args
from tests.kernels.conftest import KERNEL_MODES

MODES = [pytest.param("reference", False, id="reference"), *KERNEL_MODES]
DECODE = AttentionCase("bf16-gqa3", ((1, 0), (1, 1), (1, 17), (1, 40)), 6, 2, 64, 16, 4,
                       "bfloat16", seed=7)
PREFILL = AttentionCase("bf16-gqa3-window", ((5, 5), (1, 17), (12, 40)), 6, 2, 64, 16, 4,
                        "bfloat16", options=(("sliding_window", 9),), seed=8)


def as_bits(args, page_args=(1, 2)):
    args = list(args)
    for i in page_args:
        assert args[i].dtype == jnp.bfloat16
        args[i] = jax.lax.bitcast_convert_type(args[i], BF16_BITS)
    return args


@pytest.mark.parametrize("impl,interpret", MODES)
def test_decode_reads_bf16_bits(impl, interpret):
    args, kwargs = decode_args(DECODE)
    run = lambda a: np.asarray(pallas_kernels.paged_decode_attention(
        *a, **kwargs, impl=impl, interpret=interpret), np.float32)
    np.testing.assert_array_equal(run(as_bits(args)), run(args))


@pytest.mark.parametrize("impl,interpret", MODES)
def test_prefill_reads_bf16_bits(impl, interpret):
    args, kwargs = prefill_args(PREFILL)
    run = lambda a: np.asarray(pallas_kernels.ragged_prefill_attention(
        *a, **kwargs, impl=impl, interpret=interpret), np.float32)
    np.testing.assert_array_equal(run(as_bits(args)), run(args))
