"""Stage 2, penalties: repetition (prompt + output, vLLM/HF semantics), presence and frequency (output only)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.sampler.stage import PackContext, Stage


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["repetition", "presence", "frequency", "history", "num_prompt"], meta_fields=[])
@dataclass
class PenaltyArrays:
    repetition: jax.Array   # f32[B]; 1 = off
    presence: jax.Array     # f32[B]
    frequency: jax.Array    # f32[B]
    history: jax.Array      # i32[B, C] prompt then output ids, -1 padded
    num_prompt: jax.Array   # i32[B] how many leading history entries are prompt


def pack(ctx: PackContext) -> PenaltyArrays | None:
    rows = ctx.rows
    rep = np.ones(rows, np.float32)
    pres = np.zeros(rows, np.float32)
    freq = np.zeros(rows, np.float32)
    for i, s in enumerate(ctx.seqs):
        p = s.params
        rep[i], pres[i], freq[i] = p.repetition_penalty, p.presence_penalty, p.frequency_penalty
    if not (np.any(rep != 1.0) or np.any(pres != 0.0) or np.any(freq != 0.0)):
        return None
    history = np.full((rows, ctx.history_len), -1, np.int32)
    num_prompt = np.zeros(rows, np.int32)
    for i, s in enumerate(ctx.seqs):
        ids = s.all_ids[-ctx.history_len:]
        history[i, :len(ids)] = ids
        num_prompt[i] = len(s.prompt_ids)
    return PenaltyArrays(rep, pres, freq, history, num_prompt)


def apply(logits: jax.Array, p: PenaltyArrays) -> jax.Array:
    B, V = logits.shape
    C = p.history.shape[1]
    valid = p.history >= 0
    is_output = valid & (jnp.arange(C)[None, :] >= p.num_prompt[:, None])
    ids = jnp.where(valid, p.history, 0)
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], ids.shape)
    counts = jnp.zeros((B, V), jnp.float32).at[rows, ids].add(is_output.astype(jnp.float32))
    seen = jnp.zeros((B, V), jnp.bool_).at[rows, ids].max(valid)
    rp = p.repetition[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rp, logits * rp), logits)
    logits = logits - p.frequency[:, None] * counts
    return logits - p.presence[:, None] * (counts > 0)


STAGE = Stage("penalties", pack, apply)
