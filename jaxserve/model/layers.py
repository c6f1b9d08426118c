"""Building blocks every family's decoder shares: RMSNorm, Dense (f32 or bf16-bits kernels), the
LM head, and the bf16 lowering of a params pytree.

Params follow one layout across families, so the runner, the bf16 lowering and the sharding
rules work on any of them: {"embed": [V, E], "layers": {module: {"kernel"|"bias"|"scale": [L, ...]}},
"final_norm": {"scale": [E]}, optional "lm_head": [V, E]}.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.model.attention import ModelBatch
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


def lm_head_logits(params: Params, h: jax.Array) -> jax.Array:
    """f32[N, V] from final hidden states h [N, E], through lm_head or the tied embedding."""
    head = params["lm_head"] if "lm_head" in params else params["embed"]   # [V, E]
    rows = h.shape[0]
    if head.dtype == jnp.bfloat16 and rows == 1:
        # XLA:CPU turns a one-row bf16 product into a conversion of the whole head to f32
        # (36 ms for SmolLM2) and an f32 one; from two rows up it multiplies in bf16.
        h = jnp.pad(h, ((0, 1), (0, 0)))
    logits = jnp.einsum("ne,ve->nv", h.astype(head.dtype), head, preferred_element_type=jnp.float32)
    return logits[:rows]


def with_bf16_matmuls(params: Params) -> Params:
    """Projections in bfloat16: the layers' kernels rounded and held as their uint16 bits (see
    Dense), and the LM head as a bf16 array of its own (for tied embeddings, a rounded copy).

    The head lies outside the layer loop, so plain bf16 is safe there; in f32 it was about a
    tenth of a 2-row decode step. Activations, norms, the embedding lookup and the KV cache
    keep their dtype. Takes and returns host (numpy) params; params lowered already (restored
    so from the param cache) come back as they are.
    """
    def lower(path, leaf):
        if getattr(path[-1], "key", None) != "kernel" or leaf.dtype == BF16_BITS:
            return leaf
        return np.asarray(leaf, np.float32).astype(jnp.bfloat16).view(BF16_BITS)
    low = {**params, "layers": jax.tree_util.tree_map_with_path(lower, params["layers"])}
    head = params.get("lm_head", params.get("embed"))
    if head is not None and head.dtype != jnp.bfloat16:
        low["lm_head"] = np.asarray(head, np.float32).astype(jnp.bfloat16)
    return low


def layer_param_shapes_of(layer: nn.Module, hidden_size: int, num_kv_heads: int, head_dim: int) -> dict:
    """A decoder layer's params as jax.ShapeDtypeStructs, {module: {name: [...]}}, by tracing its
    init on a dummy 4-token prefill (jax.eval_shape: nothing runs or compiles).

    The loaders check every checkpoint tensor against these, so a wrong shape fails at load.
    """
    T = 4
    dummy = ModelBatch(
        tokens=jnp.zeros((T,), jnp.int32), positions=jnp.arange(T, dtype=jnp.int32),
        slots=jnp.zeros((T,), jnp.int32), block_tables=jnp.zeros((1, 1), jnp.int32),
        kv_lens=jnp.zeros((1,), jnp.int32), cu_q_lens=jnp.array([0, T], jnp.int32),
        logits_indices=jnp.zeros((1,), jnp.int32), max_q_len=T)
    pool = jnp.zeros((1, 2, 4, num_kv_heads * head_dim), jnp.float32)
    return jax.eval_shape(
        lambda k: layer.init(k, jnp.zeros((T, hidden_size)), pool, pool, jnp.int32(0), dummy)["params"],
        jax.random.key(0))
