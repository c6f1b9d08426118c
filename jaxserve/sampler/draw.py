"""Stage 5, draw: the token of each row: argmax for greedy rows, a seeded Gumbel-max draw otherwise.

Each row's noise uses key = fold_in(key(seed), output_index): the same seed gives the same
tokens whatever else is in the batch, and a preempted request that is recomputed draws the same
values. argmax(logits + Gumbel noise) is a draw from softmax(logits) that needs no sort and no
cumulative sum, and it leaves MASKED tokens out (their noise cannot lift them past a real logit).
Off (no row samples): plain argmax.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.sampler.stage import PackContext, Stage
from jaxserve.sampler.temperature import sampled_rows


@functools.partial(jax.tree_util.register_dataclass, data_fields=["seeds", "steps", "sampled"],
                   meta_fields=[])
@dataclass
class DrawArrays:
    seeds: jax.Array    # u32[B]
    steps: jax.Array    # i32[B] index of the token being drawn within the output
    sampled: jax.Array  # bool[B] the row draws at random (temperature > 0)


def pack(ctx: PackContext) -> DrawArrays | None:
    sampled = sampled_rows(ctx)
    if not sampled.any():
        return None
    seeds = np.zeros(ctx.rows, np.uint32)
    steps = np.zeros(ctx.rows, np.int32)
    for i, s in enumerate(ctx.seqs):
        seeds[i] = s.seed & 0xFFFFFFFF
        steps[i] = len(s.output_ids) + (ctx.step_offsets[i] if ctx.step_offsets else 0)
    return DrawArrays(seeds, steps, sampled)


def row_keys(seeds: jax.Array, steps: jax.Array) -> jax.Array:
    """One PRNG key per row: fold_in(key(seed), step)."""
    return jax.vmap(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step))(seeds, steps)


def gumbel(keys: jax.Array, vocab: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.gumbel(k, (vocab,)))(keys)


def apply(logits: jax.Array, d: DrawArrays | None) -> jax.Array:
    """f32[B, V] -> i32[B]. The earlier stages keep each row's maximum, so a greedy row's argmax
    here is the argmax of its masked and penalised logits."""
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if d is None:
        return tokens
    noisy = logits + gumbel(row_keys(d.seeds, d.steps), logits.shape[-1])
    return jnp.where(d.sampled, jnp.argmax(noisy, axis=-1).astype(jnp.int32), tokens)


STAGE = Stage("draw", pack, apply)
