"""bfloat16 projections (model.matmul_dtype) and a bfloat16 KV cache (cache.dtype) on an f32 model.

What is checked: the projections really multiply the bf16-rounded weights, a bf16 pool on a CPU
holds bf16 bits that round-trip, the compiled step never materializes an f32 copy of the pools
or of the stacked kernels (the trap that made bf16 slower than f32 here), and SmolLM2 run this
way writes the same greedy text as in f32 on prompts without near-ties.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.config import load_config
from jaxserve.kv_cache import allocate_kv_pages, storage_dtype, write_kv
from jaxserve.model.arch import tiny_arch
from jaxserve.model.attention import AttentionOptions, ModelBatch
from jaxserve.model.llama import Dense, init_random_params, with_bf16_matmuls
from jaxserve.runner import ModelRunner
from jaxserve.sampling_params import SamplingParams
from pallas_kernels.common import BF16_BITS, bf16_view
from tests.engine.conftest import make_llm


def test_bf16_dense_multiplies_rounded_weights_in_f32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((5, 24)), jnp.float32)
    w = rng.standard_normal((24, 7)).astype(np.float32)
    bits = with_bf16_matmuls({"layers": {"wq": {"kernel": w}}})["layers"]["wq"]["kernel"]
    assert bits.dtype == np.uint16
    y = Dense(7).apply({"params": {"kernel": jnp.asarray(bits)}}, x)
    expected = jnp.dot(x.astype(jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), preferred_element_type=jnp.float32)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # and not the f32 product, so the bf16 path is really taken
    assert not np.allclose(np.asarray(y), np.asarray(x @ w), rtol=0, atol=1e-6)


def test_with_bf16_matmuls_touches_only_layer_kernels_and_the_head():
    params = jax.tree_util.tree_map(np.asarray, init_random_params(tiny_arch(), jax.random.PRNGKey(0)))
    assert "lm_head" not in params                      # tied: the head is the embedding
    low = with_bf16_matmuls(params)
    for path, leaf in jax.tree_util.tree_flatten_with_path(low)[0]:
        keys = [k.key for k in path]
        is_kernel = keys[0] == "layers" and keys[-1] == "kernel"
        expected = np.uint16 if is_kernel else jnp.bfloat16 if keys == ["lm_head"] else np.float32
        assert leaf.dtype == expected, keys
    np.testing.assert_array_equal(low["lm_head"], params["embed"].astype(jnp.bfloat16))
    np.testing.assert_array_equal(low["embed"], params["embed"])   # the lookup stays f32


def test_bf16_head_gives_bf16_logits_products():
    """With only the head in bf16, the step's logits move off the f32 ones (so the bf16 head is
    the one multiplied), by a bounded amount."""
    arch = tiny_arch()
    params = init_random_params(arch, jax.random.PRNGKey(0))
    f32 = ModelRunner(arch, params, 64, 16, jnp.float32, AttentionOptions("xla"))
    low = ModelRunner(arch, params, 64, 16, jnp.float32, AttentionOptions("xla"), bf16_matmuls=True)
    low.params = {**low.params, "layers": f32.params["layers"]}   # only the head differs now
    batch = _decode_batch(2, 4)
    logits_f32, _ = f32._model_step(*f32.model_args(batch))
    logits_low, _ = low._model_step(*low.model_args(batch))
    assert logits_low.dtype == jnp.float32
    diff = np.abs(np.asarray(logits_low) - np.asarray(logits_f32))
    assert 0 < diff.max() < 0.05 * np.abs(np.asarray(logits_f32)).max()


def test_bf16_pool_on_cpu_holds_bits_that_round_trip():
    arch = tiny_arch()
    assert storage_dtype(jnp.bfloat16) == BF16_BITS and storage_dtype(jnp.float32) == jnp.float32
    kv = allocate_kv_pages(arch, 4, 8, jnp.bfloat16)
    assert kv.k.dtype == BF16_BITS
    new = jnp.asarray(np.random.default_rng(1).standard_normal((3, arch.num_kv_heads, arch.head_dim)),
                      jnp.float32)
    pool = write_kv(kv.k, jnp.int32(1), jnp.array([8, 9, 17], jnp.int32), new)
    got = bf16_view(pool[1].reshape(-1, arch.num_kv_heads, arch.head_dim)[jnp.array([8, 9, 17])])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(new.astype(jnp.bfloat16)))


def _decode_batch(rows: int, width: int) -> ModelBatch:
    tables = np.arange(1, rows * width + 1, dtype=np.int32).reshape(rows, width)
    return ModelBatch(tokens=np.ones(rows, np.int32), positions=np.full(rows, 20, np.int32),
                      slots=tables[:, 1] * 16 + 4, block_tables=tables, kv_lens=np.full(rows, 21, np.int32),
                      cu_q_lens=np.arange(rows + 1, dtype=np.int32),
                      logits_indices=np.arange(rows, dtype=np.int32), max_q_len=1,
                      num_short_seqs=rows)


def test_compiled_step_has_no_f32_copy_of_pools_or_kernels():
    arch = tiny_arch()
    params = init_random_params(arch, jax.random.PRNGKey(0))
    runner = ModelRunner(arch, params, 64, 16, jnp.float32, AttentionOptions("xla"),
                         bf16_matmuls=True, kv_dtype=jnp.bfloat16)
    hlo = runner._model_step.program(*runner.model_args(_decode_batch(2, 4))).as_text()
    pool_f32 = "f32[" + ",".join(map(str, runner.kv.k.shape)) + "]"
    kernel_f32 = "f32[" + ",".join(map(str, runner.params["layers"]["w_up"]["kernel"].shape)) + "]"
    assert pool_f32 not in hlo
    assert kernel_f32 not in hlo


def test_config_names_bad_low_precision_fields():
    with pytest.raises(ValueError, match="model.matmul_dtype"):
        load_config(overrides={"model": {"matmul_dtype": "int4"}})
    with pytest.raises(ValueError, match="cache.dtype"):
        load_config(overrides={"cache": {"dtype": "fp8"}})


STABLE_PROMPTS = ["The capital of France is", "List three prime numbers:", "The quick brown fox",
                  "What is the meaning of life?"]
# bf16 products move SmolLM2's logits by well under this (nats); a greedy flip with a wider f32
# margin between the two tokens would be a bug, not rounding.
NEAR_TIE_NATS = 0.5


@pytest.mark.slow
def test_smollm2_bf16_matches_f32_greedy_text(smollm):
    """bf16 greedy tokens equal f32's up to the first genuine f32 near-tie, where they may flip.

    Which positions are near-ties depends on the CPU (with or without AVX512-BF16 the bf16 dots
    round differently), so the test checks the margin at each first difference instead of
    trusting a hand-picked prompt list.
    """
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    ref = smollm.generate(STABLE_PROMPTS, params, use_tqdm=False)
    low = make_llm(model__matmul_dtype="bfloat16", cache__dtype="bfloat16")
    assert low.engine.runner.kv.k.dtype == BF16_BITS
    got = low.generate(STABLE_PROMPTS, params.replace(logprobs=None), use_tqdm=False)
    num_equal = 0
    for r, g in zip(ref, got):
        expected, tokens = r.outputs[0].token_ids, g.outputs[0].token_ids
        i = next((i for i, (a, b) in enumerate(zip(expected, tokens)) if a != b), None)
        if i is None:
            num_equal += 1
            continue
        top = dict(r.outputs[0].logprobs[i].top)   # f32's best two at the first difference
        assert tokens[i] in top, (r.prompt, i, tokens[i], top)
        assert top[expected[i]] - top[tokens[i]] < NEAR_TIE_NATS, (r.prompt, i, top)
    assert num_equal >= len(STABLE_PROMPTS) // 2


def _one_row_prefill(tokens: int) -> ModelBatch:
    return ModelBatch(tokens=np.ones(tokens, np.int32), positions=np.arange(tokens, dtype=np.int32),
                      slots=np.arange(tokens, dtype=np.int32) + 16,
                      block_tables=np.arange(1, 3, dtype=np.int32)[None], kv_lens=np.array([tokens], np.int32),
                      cu_q_lens=np.array([0, tokens], np.int32), logits_indices=np.array([tokens - 1], np.int32),
                      max_q_len=tokens)


def test_one_row_logits_do_not_convert_the_bf16_head_to_f32():
    """A prefill needs logits for one row; XLA:CPU would make that an f32 product over a
    converted copy of the whole head (36 ms a step for SmolLM2) unless the row is padded."""
    arch = tiny_arch()
    runner = ModelRunner(arch, init_random_params(arch, jax.random.PRNGKey(0)), 64, 16, jnp.float32,
                         AttentionOptions("xla"), bf16_matmuls=True)
    hlo = runner._model_step.program(*runner.model_args(_one_row_prefill(16))).as_text()
    head_f32 = "f32[" + ",".join(map(str, runner.params["lm_head"].shape)) + "]"
    made = [line for line in hlo.splitlines() if f"= {head_f32}" in line and "parameter(" not in line]
    assert not made, made
    logits, _ = runner._model_step(*runner.model_args(_one_row_prefill(16)))
    assert logits.shape == (1, arch.vocab_size)
