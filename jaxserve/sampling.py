"""Sampling on device: grammar mask, penalties, temperature, top-k, top-p, min-p, seeded draws, logprobs.

Every row carries its own parameters, so one batch mixes greedy and sampled requests. Each row's
random draw uses key = fold_in(key(seed), output_index): the same seed gives the same tokens
whatever else is in the batch, and a preempted request that is recomputed draws the same values.
Static flags switch whole features off so a batch that needs no sort never pays for one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

# Masked logits get a large finite negative, not -inf: a row whose every token were masked
# would otherwise turn into NaN after softmax.
_MASKED = -1e30


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "seeds", "steps", "history", "num_prompt", "token_mask"],
    meta_fields=["do_sample", "use_filters", "use_penalties", "num_logprobs", "use_mask"],
)
@dataclass
class SamplingArrays:
    temperature: jax.Array         # f32[B]; 0 = greedy
    top_k: jax.Array               # i32[B]; 0 = off
    top_p: jax.Array               # f32[B]; 1 = off
    min_p: jax.Array               # f32[B]; 0 = off
    repetition_penalty: jax.Array  # f32[B]; 1 = off
    presence_penalty: jax.Array    # f32[B]
    frequency_penalty: jax.Array   # f32[B]
    seeds: jax.Array               # u32[B]
    steps: jax.Array               # i32[B] index of the token being drawn within the output
    history: jax.Array             # i32[B, C] prompt then output ids, -1 padded (penalties only)
    num_prompt: jax.Array          # i32[B] how many leading history entries are prompt
    token_mask: jax.Array          # i32[B, W] packed allowed-token bits (structured outputs); [B, 1] unused
    do_sample: bool                # any row has temperature > 0
    use_filters: bool              # any row uses top-k, top-p or min-p
    use_penalties: bool            # any row uses a penalty
    num_logprobs: int              # top alternatives to return; -1 = no logprobs at all
    use_mask: bool = False         # any row is constrained by a grammar


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tokens", "logprobs", "top_ids", "top_logprobs"], meta_fields=[])
@dataclass
class SampleResult:
    tokens: jax.Array        # i32[B]
    logprobs: jax.Array      # f32[B] of the chosen token (zeros when not requested)
    top_ids: jax.Array       # i32[B, k]
    top_logprobs: jax.Array  # f32[B, k]


def apply_token_mask(logits: jax.Array, s: SamplingArrays) -> jax.Array:
    """Masks the tokens a row's grammar forbids; bit j of word w allows token 32 * w + j."""
    B, V = logits.shape
    bits = (s.token_mask[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1       # i32[B, W, 32]
    allowed = bits.reshape(B, -1).astype(jnp.bool_)
    if allowed.shape[1] < V:   # ids past the tokenizer's vocabulary (padded embeddings): never
        allowed = jnp.pad(allowed, ((0, 0), (0, V - allowed.shape[1])))
    return jnp.where(allowed[:, :V], logits, _MASKED)


def apply_penalties(logits: jax.Array, s: SamplingArrays) -> jax.Array:
    """Repetition (prompt + output, vLLM/HF semantics), presence and frequency (output only)."""
    B, V = logits.shape
    C = s.history.shape[1]
    valid = s.history >= 0
    is_output = valid & (jnp.arange(C)[None, :] >= s.num_prompt[:, None])
    ids = jnp.where(valid, s.history, 0)
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], ids.shape)
    counts = jnp.zeros((B, V), jnp.float32).at[rows, ids].add(is_output.astype(jnp.float32))
    seen = jnp.zeros((B, V), jnp.bool_).at[rows, ids].max(valid)
    rp = s.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rp, logits * rp), logits)
    logits = logits - s.frequency_penalty[:, None] * counts
    return logits - s.presence_penalty[:, None] * (counts > 0)


def apply_filters(logits: jax.Array, s: SamplingArrays) -> jax.Array:
    """Top-k, then top-p on what remains, then min-p; logits are already temperature-scaled."""
    V = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)                                    # f32[B, V]
    k = jnp.where(s.top_k > 0, jnp.minimum(s.top_k, V), V)
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)            # f32[B, 1]
    sorted_desc = jnp.where(jnp.arange(V)[None, :] < k[:, None], sorted_desc, _MASKED)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep a token if the mass strictly before it is below top_p (the top token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < s.top_p[:, None]
    num_keep = jnp.sum(keep, axis=-1)
    pth = jnp.take_along_axis(sorted_desc, (num_keep - 1)[:, None], axis=-1)
    threshold = jnp.maximum(kth, pth)
    logits = jnp.where(logits < threshold, _MASKED, logits)
    probs = jax.nn.softmax(logits, axis=-1)
    min_keep = probs >= s.min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(min_keep, logits, _MASKED)


def _gumbel(seeds: jax.Array, steps: jax.Array, vocab: int) -> jax.Array:
    def one(seed, step):
        return jax.random.gumbel(jax.random.fold_in(jax.random.key(seed), step), (vocab,))
    return jax.vmap(one)(seeds, steps)


def sample(logits: jax.Array, s: SamplingArrays) -> SampleResult:
    """logits: f32[B, V] -> SampleResult; pure, per-row parameters."""
    B, V = logits.shape
    logits = logits.astype(jnp.float32)
    processed = apply_token_mask(logits, s) if s.use_mask else logits
    processed = apply_penalties(processed, s) if s.use_penalties else processed
    tokens = jnp.argmax(processed, axis=-1).astype(jnp.int32)
    if s.do_sample:
        greedy = s.temperature <= 0
        scaled = processed / jnp.where(greedy, 1.0, s.temperature)[:, None]
        if s.use_filters:
            scaled = apply_filters(scaled, s)
        drawn = jnp.argmax(scaled + _gumbel(s.seeds, s.steps, V), axis=-1).astype(jnp.int32)
        tokens = jnp.where(greedy, tokens, drawn)
    k = max(s.num_logprobs, 0)
    if s.num_logprobs < 0:
        zeros = jnp.zeros((B,), jnp.float32)
        return SampleResult(tokens, zeros, jnp.zeros((B, 0), jnp.int32), jnp.zeros((B, 0), jnp.float32))
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    top_lp, top_ids = jax.lax.top_k(logprobs, k) if k else (jnp.zeros((B, 0)), jnp.zeros((B, 0), jnp.int32))
    return SampleResult(tokens, chosen, top_ids.astype(jnp.int32), top_lp)
