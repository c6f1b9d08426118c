"""Gemma 2 / Gemma 3 decoder in Flax: scaled embed -> scan(layer groups) -> norm -> capped logits.

What differs from llama.py: embeddings times sqrt(E); RMSNorms around both the attention and
the MLP, before and after (their (1 + w) scales are folded into plain scales at load); GeGLU with
tanh GELU; logits scaled by 1/sqrt(query_pre_attn_scalar); optional soft caps on attention and
final logits (Gemma 2); per-head q/k norm (Gemma 3); and layers of two kinds, "sliding" (a
window, local RoPE base) and "full" (global base and scaling), interleaved.

Layers compile once per kind, not per layer: params are held per kind ({"sliding": [Ls, ...],
"full": [Lf, ...]}, see arrange_layers); the layer sequence is cut into its repeating group
(Gemma 2: sliding, full; Gemma 3: five sliding, one full) and an outer scan runs the groups,
each run of one kind inside a group being an inner scan; a partial group at the end (Gemma 3 1B:
26 layers = 4 x 6 + 2) is one more pass of the same runs.
"""
from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kv_cache import KVPages, write_kv
from jaxserve.model.arch import ModelArch
from jaxserve.model.attention import AttentionOptions, ModelBatch, paged_attention
from jaxserve.model.layers import Dense, Params, RMSNorm, layer_param_shapes_of, lm_head_logits
from jaxserve.model.rope import apply_rope, rope_attention_factor, rope_frequencies

KINDS = ("sliding", "full")


class GemmaLayer(nn.Module):
    """One sandwich-norm block of one kind. Takes and returns the KV pools."""

    arch: ModelArch
    opts: AttentionOptions
    sliding: bool

    @nn.compact
    def __call__(self, x, k_pool, v_pool, layer, batch: ModelBatch):
        a = self.arch
        T, H, K, D = x.shape[0], a.num_heads, a.num_kv_heads, a.head_dim
        norm = lambda name: RMSNorm(a.rms_norm_eps, name=name)

        h = norm("attn_norm")(x)
        q = Dense(H * D, name="wq")(h).reshape(T, H, D)
        k = Dense(K * D, name="wk")(h).reshape(T, K, D)
        v = Dense(K * D, name="wv")(h).reshape(T, K, D)
        if a.qk_norm:                                   # Gemma 3
            q, k = norm("q_norm")(q), norm("k_norm")(k)
        if self.sliding:                                # local base, never scaled
            theta, scaling = a.rope_local_theta or a.rope_theta, None
        else:
            theta, scaling = a.rope_theta, a.rope_scaling
        inv_freq, mscale = rope_frequencies(D, theta, scaling), rope_attention_factor(scaling)
        q = apply_rope(q, batch.positions, inv_freq, mscale)
        k = apply_rope(k, batch.positions, inv_freq, mscale)
        k_pool = write_kv(k_pool, layer, batch.slots, k)
        v_pool = write_kv(v_pool, layer, batch.slots, v)
        attn = paged_attention(
            q, k, v, k_pool, v_pool, layer, batch, self.opts,
            sliding_window=a.sliding_window if self.sliding else None, soft_cap=a.attn_soft_cap,
            scale=1.0 / math.sqrt(a.query_pre_attn_scalar or D))
        h = Dense(a.hidden_size, name="wo")(attn.reshape(T, -1).astype(x.dtype))
        x = x + norm("post_attn_norm")(h)

        h = norm("mlp_norm")(x)
        h = nn.gelu(Dense(a.intermediate_size, name="w_gate")(h), approximate=True) * \
            Dense(a.intermediate_size, name="w_up")(h)
        x = x + norm("post_mlp_norm")(Dense(a.hidden_size, name="w_down")(h))
        return x, k_pool, v_pool


def layer_kinds(arch: ModelArch) -> tuple[str, ...]:
    return arch.layer_kinds or ("full",) * arch.num_layers


def layer_groups(kinds: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...], int, tuple[tuple[str, int], ...]]:
    """(runs of the repeating group, number of whole groups, runs of the partial group at the end).

    A run is (kind, count) of consecutive layers of one kind. The group is the shortest prefix
    whose repetition gives every layer's kind.
    """
    period = next(p for p in range(1, len(kinds) + 1)
                  if all(kinds[i] == kinds[i % p] for i in range(len(kinds))))
    runs = lambda ks: tuple((k, len(list(g))) for k, g in itertools.groupby(ks))
    groups = len(kinds) // period
    return runs(kinds[:period]), groups, runs(kinds[groups * period:])


def arrange_layers(layers: dict, arch: ModelArch) -> dict:
    """Stacked [L, ...] params -> {kind: [L_kind, ...]}, each kind's layers in order."""
    kinds = np.array(layer_kinds(arch))
    return {kind: jax.tree_util.tree_map(lambda a: a[np.flatnonzero(kinds == kind)], layers)
            for kind in KINDS if (kinds == kind).any()}


def forward(params: Params, kv: KVPages, batch: ModelBatch, *, arch: ModelArch,
            opts: AttentionOptions) -> tuple[jax.Array, KVPages]:
    """Run one padded step. Returns logits f32[N, V] at batch.logits_indices, and the pools."""
    embed = params["embed"]                                                  # [V, E]
    x = jnp.take(embed, batch.tokens, axis=0)
    x = x * jnp.asarray(math.sqrt(arch.hidden_size), x.dtype)               # [T, E]
    kinds = layer_kinds(arch)
    modules = {kind: GemmaLayer(arch, opts, sliding=kind == "sliding") for kind in KINDS}
    ids = {kind: jnp.asarray([i for i, k in enumerate(kinds) if k == kind], jnp.int32) for kind in KINDS}
    stacks = {kind: (params["layers"][kind], ids[kind]) for kind in params["layers"]}
    group_runs, num_groups, tail_runs = layer_groups(kinds)

    def run(kind, carry, stack):
        """Scan one kind's layers [n, ...] (with their pool ids i32[n])."""
        def body(carry, xs):
            x, k_pool, v_pool = carry
            layer_params, layer = xs
            return modules[kind].apply({"params": layer_params}, x, k_pool, v_pool, layer, batch), None
        return jax.lax.scan(body, carry, stack)[0]

    def runs(carry, runs_, stacks_):
        offset = {kind: 0 for kind in stacks_}
        for kind, count in runs_:
            start = offset[kind]
            part = jax.tree_util.tree_map(lambda a: a[start:start + count], stacks_[kind])
            carry = run(kind, carry, part)
            offset[kind] += count
        return carry

    per_group = {k: sum(c for kind, c in group_runs if kind == k) for k in stacks}
    grouped = {k: jax.tree_util.tree_map(
        lambda a: a[:num_groups * n].reshape(num_groups, n, *a.shape[1:]), stacks[k])
        for k, n in per_group.items() if n}
    carry = (x, kv.k, kv.v)
    carry = jax.lax.scan(lambda c, xs: (runs(c, group_runs, xs), None), carry, grouped)[0]
    if tail_runs:
        tail = {k: jax.tree_util.tree_map(lambda a: a[num_groups * per_group[k]:], stacks[k])
                for k in stacks}
        carry = runs(carry, tail_runs, tail)
    x, k_pool, v_pool = carry

    h = jnp.take(x, batch.logits_indices, axis=0)                            # [N, E]
    h = RMSNorm(arch.rms_norm_eps).apply({"params": params["final_norm"]}, h)
    logits = lm_head_logits(params, h)
    if arch.final_soft_cap is not None:
        logits = arch.final_soft_cap * jnp.tanh(logits / arch.final_soft_cap)
    return logits, KVPages(k=k_pool, v=v_pool)


def layer_param_shapes(arch: ModelArch) -> dict:
    """One layer's params as ShapeDtypeStructs, {module: {name: [...]}} (both kinds alike)."""
    layer = GemmaLayer(arch, AttentionOptions(impl="reference"), sliding=False)
    return layer_param_shapes_of(layer, arch.hidden_size, arch.num_kv_heads, arch.head_dim)


def init_random_params(arch: ModelArch, key: jax.Array, dtype=jnp.float32) -> Params:
    """Random weights in the per-kind layout (tests and benchmarks)."""
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))

    def fill(path, leaf):
        shape = (arch.num_layers, *leaf.shape)
        if "scale" in str(path[-1]):
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return rng.standard_normal(shape) / np.sqrt(leaf.shape[0])

    layers = jax.tree_util.tree_map_with_path(fill, layer_param_shapes(arch))
    params = {"embed": 0.5 * rng.standard_normal((arch.vocab_size, arch.hidden_size)),
              "layers": arrange_layers(layers, arch),
              "final_norm": {"scale": np.ones((arch.hidden_size,))}}
    if not arch.tie_word_embeddings:
        params["lm_head"] = 0.1 * rng.standard_normal((arch.vocab_size, arch.hidden_size))
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params)
