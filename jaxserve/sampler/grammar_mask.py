"""Stage 1, grammar mask (structured outputs): tokens a row's grammar forbids get MASKED.

It runs first, before penalties and temperature, so no later stage can move probability onto a
token the grammar rules out. Packing asks each constrained row's matcher for its bitmask (the
host cost of structured outputs, timed by the engine); unconstrained and padding rows are all ones.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.sampler.stage import MASKED, PackContext, Stage
from jaxserve.structured import pack_token_masks


@functools.partial(jax.tree_util.register_dataclass, data_fields=["words"], meta_fields=[])
@dataclass
class GrammarMaskArrays:
    words: jax.Array   # i32[B, W] packed allowed-token bits: bit j of word w allows token 32 * w + j


def pack(ctx: PackContext) -> GrammarMaskArrays | None:
    masks = pack_token_masks([s.grammar for s in ctx.seqs], ctx.rows)
    return None if masks is None else GrammarMaskArrays(masks)


def apply(logits: jax.Array, m: GrammarMaskArrays) -> jax.Array:
    B, V = logits.shape
    bits = (m.words[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1       # i32[B, W, 32]
    allowed = bits.reshape(B, -1).astype(jnp.bool_)
    if allowed.shape[1] < V:   # ids past the tokenizer's vocabulary (padded embeddings): never
        allowed = jnp.pad(allowed, ((0, 0), (0, V - allowed.shape[1])))
    return jnp.where(allowed[:, :V], logits, MASKED)


STAGE = Stage("grammar_mask", pack, apply)
