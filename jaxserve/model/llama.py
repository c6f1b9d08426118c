"""Llama-family decoder in Flax: embed -> scan(layers) -> norm -> logits.

GQA, RoPE (Hugging Face's rotate-half layout; GGUF q/k rows are un-permuted at load), RMSNorm,
SwiGLU, tied or separate LM head, optional q/k/v bias (Qwen2). Layer weights are stacked on a
leading L axis and iterated with `jax.lax.scan`, so the 30 layers of SmolLM2 compile once.

The KV pools ride in the scan carry: each layer scatters its new K/V into the pools and the
attention interface reads them back through block tables, so prefill chunks and decode tokens
see their whole cached context without any per-step copy.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kv_cache import KVPages, write_kv
from jaxserve.model.arch import ModelArch
from jaxserve.model.attention import AttentionOptions, ModelBatch, paged_attention
from pallas_kernels.common import BF16_BITS

Params = dict[str, Any]


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE. x: [T, N, D]; positions: i32[T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))   # f32[D/2]
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]        # f32[T, D/2]
    cos = jnp.cos(angles)[:, None, :]
    sin = jnp.sin(angles)[:, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Dense(nn.Module):
    """x @ kernel (+ bias), kernel [in, out], in x's dtype.

    A uint16 kernel holds bfloat16 bits (see with_bf16_matmuls): x is then multiplied in bf16 with
    an f32 result, the fast form on CPUs with AVX512-BF16 and on tensor cores. The bits ride in
    uint16 because XLA:CPU, given bf16 weights stacked for the layer scan, hoists an f32 copy of
    all of them out of the loop and converts each layer's slice back, every step.
    """

    features: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        if kernel.dtype == BF16_BITS:
            y = jnp.dot(x.astype(jnp.bfloat16), jax.lax.bitcast_convert_type(kernel, jnp.bfloat16),
                        preferred_element_type=jnp.float32).astype(x.dtype)
        else:
            y = jnp.dot(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
        return y


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
        q = rope(q, batch.positions, a.rope_theta)
        k = rope(k, batch.positions, a.rope_theta)
        k_pool = write_kv(k_pool, layer, batch.slots, k)
        v_pool = write_kv(v_pool, layer, batch.slots, v)
        attn = paged_attention(q, k, v, k_pool, v_pool, layer, batch, self.opts)    # [T, H, D]
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
    head = params["lm_head"] if "lm_head" in params else embed   # [V, E]
    rows = h.shape[0]
    if head.dtype == jnp.bfloat16 and rows == 1:
        # XLA:CPU turns a one-row bf16 product into a conversion of the whole head to f32
        # (36 ms for SmolLM2) and an f32 one; from two rows up it multiplies in bf16.
        h = jnp.pad(h, ((0, 1), (0, 0)))
    logits = jnp.einsum("ne,ve->nv", h.astype(head.dtype), head, preferred_element_type=jnp.float32)
    logits = logits[:rows]
    return logits, KVPages(k=k_pool, v=v_pool)


def with_bf16_matmuls(params: Params) -> Params:
    """Projections in bfloat16: the layers' kernels rounded and held as their uint16 bits (see
    Dense), and the LM head as a bf16 array of its own (for tied embeddings, a rounded copy).

    The head lies outside the layer loop, so plain bf16 is safe there; in f32 it was about a
    tenth of a 2-row decode step. Activations, norms, the embedding lookup and the KV cache
    keep their dtype. Takes and returns host (numpy) params.
    """
    def lower(path, leaf):
        if getattr(path[-1], "key", None) != "kernel":
            return leaf
        return np.asarray(leaf, np.float32).astype(jnp.bfloat16).view(BF16_BITS)
    low = {**params, "layers": jax.tree_util.tree_map_with_path(lower, params["layers"])}
    head = params.get("lm_head", params.get("embed"))
    if head is not None:
        low["lm_head"] = np.asarray(head, np.float32).astype(jnp.bfloat16)
    return low


def init_random_params(arch: ModelArch, key: jax.Array, dtype=jnp.float32) -> Params:
    """Random weights with the real layout (for tests and benchmarks without a checkpoint).

    Shapes come from the module (jax.eval_shape, nothing compiled); values from numpy, which
    fills a 49k-token embedding in milliseconds where a traced init takes seconds.
    """
    T, E = 4, arch.hidden_size
    dummy = ModelBatch(
        tokens=jnp.zeros((T,), jnp.int32), positions=jnp.arange(T, dtype=jnp.int32),
        slots=jnp.zeros((T,), jnp.int32), block_tables=jnp.zeros((1, 1), jnp.int32),
        kv_lens=jnp.zeros((1,), jnp.int32), cu_q_lens=jnp.array([0, T], jnp.int32),
        logits_indices=jnp.zeros((1,), jnp.int32), mode="prefill", max_q_len=T)
    pool = jnp.zeros((1, 2, 4, arch.num_kv_heads, arch.head_dim), jnp.float32)
    layer = DecoderLayer(arch, AttentionOptions(impl="reference"))
    shapes = jax.eval_shape(
        lambda k: layer.init(k, jnp.zeros((T, E)), pool, pool, jnp.int32(0), dummy)["params"], key)
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
