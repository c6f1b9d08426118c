"""Llama-style decoder in Flax: embed -> scan(layers) -> norm -> logits.

GQA, RoPE (rope.py: default, linear, llama3), RMSNorm, SwiGLU, tied or separate LM head, and the
switches the Llama-like families need: q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3), a
sliding window (Mistral, Phi-3). Layer weights are stacked on a leading L axis and iterated with
`jax.lax.scan`, so every layer compiles once (all layers here are of one kind).

The KV pools ride in the scan carry: each layer scatters its new K/V into the pools and the
attention interface reads them back through block tables, so prefill chunks and decode tokens
see their whole cached context without any per-step copy.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kv_cache import KVPages, write_kv
from jaxserve.model.arch import ModelArch
from jaxserve.model.attention import AttentionOptions, ModelBatch, paged_attention
from jaxserve.model.layers import (Dense, Params, RMSNorm, layer_param_shapes_of, lm_head_logits,
                                   with_bf16_matmuls)
from jaxserve.model.rope import apply_rope, rope_attention_factor, rope_frequencies

__all__ = ["DecoderLayer", "Dense", "forward", "init_random_params", "layer_param_shapes",
           "with_bf16_matmuls"]


class DecoderLayer(nn.Module):
    """One pre-norm block. Takes and returns the KV pools it writes this step's K/V into."""

    arch: ModelArch
    opts: AttentionOptions

    @nn.compact
    def __call__(self, x, k_pool, v_pool, layer, batch: ModelBatch):
        a = self.arch
        T = x.shape[0]
        dense = lambda n, name, bias=False: Dense(n, use_bias=bias, name=name)

        h = RMSNorm(a.rms_norm_eps, name="attn_norm")(x)
        q = dense(a.num_heads * a.head_dim, "wq", a.qkv_bias)(h).reshape(T, a.num_heads, a.head_dim)
        k = dense(a.num_kv_heads * a.head_dim, "wk", a.qkv_bias)(h).reshape(T, a.num_kv_heads, a.head_dim)
        v = dense(a.num_kv_heads * a.head_dim, "wv", a.qkv_bias)(h).reshape(T, a.num_kv_heads, a.head_dim)
        if a.qk_norm:                               # Qwen3: one [D] scale shared by all heads
            q = RMSNorm(a.rms_norm_eps, name="q_norm")(q)
            k = RMSNorm(a.rms_norm_eps, name="k_norm")(k)
        inv_freq = rope_frequencies(a.head_dim, a.rope_theta, a.rope_scaling)
        mscale = rope_attention_factor(a.rope_scaling)
        q = apply_rope(q, batch.positions, inv_freq, mscale)
        k = apply_rope(k, batch.positions, inv_freq, mscale)
        k_pool = write_kv(k_pool, layer, batch.slots, k)
        v_pool = write_kv(v_pool, layer, batch.slots, v)
        attn = paged_attention(q, k, v, k_pool, v_pool, layer, batch, self.opts,
                               sliding_window=a.sliding_window)                   # [T, H, D]
        x = x + dense(a.hidden_size, "wo")(attn.reshape(T, -1).astype(x.dtype))

        h = RMSNorm(a.rms_norm_eps, name="mlp_norm")(x)
        gate = dense(a.intermediate_size, "w_gate")(h)
        up = dense(a.intermediate_size, "w_up")(h)
        x = x + dense(a.hidden_size, "w_down")(nn.silu(gate) * up)
        return x, k_pool, v_pool


def forward(params: Params, kv: KVPages, batch: ModelBatch, *, arch: ModelArch,
            opts: AttentionOptions) -> tuple[jax.Array, KVPages]:
    """Run one padded step.

    Returns:
      logits: f32[N, V] at batch.logits_indices, and the updated pools.
    """
    embed = params["embed"]                                      # [V, E]
    x = jnp.take(embed, batch.tokens, axis=0)                    # [T, E]
    layer_module = DecoderLayer(arch, opts)

    def body(carry, xs):
        x, k_pool, v_pool = carry
        layer_params, layer = xs
        x, k_pool, v_pool = layer_module.apply({"params": layer_params}, x, k_pool, v_pool, layer, batch)
        return (x, k_pool, v_pool), None

    layer_ids = jnp.arange(arch.num_layers, dtype=jnp.int32)
    (x, k_pool, v_pool), _ = jax.lax.scan(body, (x, kv.k, kv.v), (params["layers"], layer_ids))

    h = jnp.take(x, batch.logits_indices, axis=0)                # [N, E]
    h = RMSNorm(arch.rms_norm_eps).apply({"params": params["final_norm"]}, h)
    return lm_head_logits(params, h), KVPages(k=k_pool, v=v_pool)


def layer_param_shapes(arch: ModelArch) -> dict:
    """One layer's params as ShapeDtypeStructs, {module: {name: [...]}}."""
    layer = DecoderLayer(arch, AttentionOptions(impl="reference"))
    return layer_param_shapes_of(layer, arch.hidden_size, arch.num_kv_heads, arch.head_dim)


def init_random_params(arch: ModelArch, key: jax.Array, dtype=jnp.float32) -> Params:
    """Random weights with the real layout (for tests and benchmarks without a checkpoint).

    Shapes come from the module (jax.eval_shape, nothing compiled); values from numpy, which
    fills a 49k-token embedding in milliseconds where a traced init takes seconds.
    """
    E = arch.hidden_size
    shapes = layer_param_shapes(arch)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))

    def fill(path, leaf):
        shape = (arch.num_layers, *leaf.shape)
        name = str(path[-1])
        if "scale" in name:        # norms near one, perturbed so a wrong norm shows in tests
            return 1.0 + 0.1 * rng.standard_normal(shape)
        if "bias" in name:
            return 0.02 * rng.standard_normal(shape)
        return rng.standard_normal(shape) / np.sqrt(leaf.shape[0])   # lecun-normal kernels [in, out]

    params = {
        "embed": 0.5 * rng.standard_normal((arch.vocab_size, E)),
        "layers": jax.tree_util.tree_map_with_path(fill, shapes),
        "final_norm": {"scale": np.ones((E,))},
    }
    if not arch.tie_word_embeddings:
        params["lm_head"] = 0.1 * rng.standard_normal((arch.vocab_size, E))
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params)
