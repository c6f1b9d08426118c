"""Tensor-parallel placement follows the family's registry entry, per-kind Gemma stacks included,
and a sharded step gives the unsharded logits."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.model.arch import tiny_arch
from jaxserve.model.attention import AttentionOptions, ModelBatch
from jaxserve.model.registry import get_family
from jaxserve.runner import ModelRunner
from jaxserve.sharding import make_mesh

GEMMA2 = dataclasses.replace(
    tiny_arch(), family="gemma2", sliding_window=4, layer_kinds=("sliding", "full"),
    query_pre_attn_scalar=16.0, attn_soft_cap=5.0, final_soft_cap=30.0, rms_norm_eps=1e-6)


def _prefill(tokens: int) -> ModelBatch:
    pos = np.arange(tokens, dtype=np.int32)
    return ModelBatch(tokens=(pos * 7 + 3) % 128, positions=pos, slots=pos + 16,
                      block_tables=np.arange(1, 3, dtype=np.int32)[None],
                      kv_lens=np.array([tokens], np.int32), cu_q_lens=np.array([0, tokens], np.int32),
                      logits_indices=pos, max_q_len=tokens)


def test_gemma_sharded_on_two_devices_matches_one():
    params = get_family("gemma2").init_random_params(GEMMA2, jax.random.key(0))
    one = ModelRunner(GEMMA2, params, 8, 16, jnp.float32, AttentionOptions("xla"))
    two = ModelRunner(GEMMA2, params, 8, 16, jnp.float32, AttentionOptions("xla"), mesh=make_mesh([0, 1]))
    wq, wo = two.params["layers"]["sliding"]["wq"]["kernel"], two.params["layers"]["full"]["wo"]["kernel"]
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, None, "tp")   # column-parallel
    assert wo.sharding.spec == jax.sharding.PartitionSpec(None, "tp", None)   # row-parallel
    np.testing.assert_allclose(two.logits(_prefill(12)), one.logits(_prefill(12)), rtol=0, atol=1e-4)
