"""A decode step updates the KV pools in place: its compiled program never copies a whole pool.

A copy of the pools per layer makes a step cost time in proportion to the cache (Gemma 3 270M,
one KV head: 3.4 s per token at 2,560 pages, while pools had a size-1 K axis; see kv_cache). The check reads the
optimized HLO, so it holds whatever the machine's speed.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.model.arch import tiny_arch
from jaxserve.model.attention import AttentionOptions, ModelBatch
from jaxserve.model.registry import get_family
from jaxserve.runner import ModelRunner

NUM_PAGES, PAGE_SIZE, ROWS, PAGES_PER_ROW = 64, 16, 2, 4


def decode_batch() -> ModelBatch:
    tables = np.arange(1, 1 + ROWS * PAGES_PER_ROW, dtype=np.int32).reshape(ROWS, PAGES_PER_ROW)
    return ModelBatch(
        tokens=jnp.zeros(ROWS, jnp.int32), positions=jnp.full(ROWS, 20, jnp.int32),
        slots=jnp.asarray(tables[:, 1] * PAGE_SIZE + 4), block_tables=jnp.asarray(tables),
        kv_lens=jnp.full(ROWS, 21, jnp.int32), cu_q_lens=jnp.arange(ROWS + 1, dtype=jnp.int32),
        logits_indices=jnp.arange(ROWS, dtype=jnp.int32), max_q_len=1, num_short_seqs=ROWS)


ARCHS = {
    "llama-one-kv-head": dataclasses.replace(tiny_arch(), num_kv_heads=1),
    "llama-gqa": tiny_arch(),
    "gemma3-one-kv-head": dataclasses.replace(
        tiny_arch(), family="gemma3", num_layers=6, num_kv_heads=1, qk_norm=True, sliding_window=8,
        layer_kinds=("sliding",) * 5 + ("full",)),
}


@pytest.mark.parametrize("kv_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ARCHS)
def test_decode_step_copies_no_pool(name, kv_dtype):
    arch = ARCHS[name]
    params = get_family(arch.family).init_random_params(arch, jax.random.PRNGKey(0))
    runner = ModelRunner(arch, params, NUM_PAGES, PAGE_SIZE, jnp.float32,
                         AttentionOptions(impl="auto"), kv_dtype=kv_dtype)
    hlo = runner._model_step.program(*runner.model_args(decode_batch())).as_text()
    L, P, S, KD = runner.kv.k.shape
    K, D = arch.num_kv_heads, arch.head_dim
    pool_sized = {f"{L},{P},{S},{KD}", f"{L * P * S},{KD}", f"{L},{P},{S},{K},{D}",
                  f"{L * P},{S},{K},{D}", f"{L * P * S},{K},{D}"}
    copies = [line.strip()[:160] for line in hlo.splitlines()
              if (m := re.search(r"= \w+\[([\d,]+)\]\S* copy\(", line)) and m.group(1) in pool_sized]
    assert not copies, f"{len(copies)} whole-pool copies per step, e.g. {copies[0]}"
