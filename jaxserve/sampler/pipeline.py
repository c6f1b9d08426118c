"""The sampler: an ordered list of stages, packed on the host and applied on device in one order.

Order: grammar_mask -> penalties -> temperature -> filters -> draw

The grammar mask comes first so that penalties, temperature and the filters only ever see the
tokens the grammar allows; the filters run on temperature-scaled logits (as in vLLM and
llama.cpp); the draw is last. Each stage lives in its own module with its host packing beside
its device function (see stage.py), so a new logits feature is one new module and one entry in
STAGES. A stage that no row of a batch needs packs to None and is not traced into that batch's
program. Every row carries its own parameters, so one batch mixes greedy and sampled requests.

    build_sampling(seqs, rows, shapes)  host:   Sequences -> SamplingArrays (numpy)
    sample(logits, arrays)              device: f32[B, V] -> SampleResult (tokens, logprobs)
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxserve.sampler import draw, filters, grammar_mask, penalties, temperature
from jaxserve.sampler.stage import PackContext, PackTimes, Stage

STAGES: tuple[Stage, ...] = (grammar_mask.STAGE, penalties.STAGE, temperature.STAGE, filters.STAGE,
                             draw.STAGE)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["stages"],
                   meta_fields=["num_logprobs"])
@dataclass
class SamplingArrays:
    stages: dict[str, Any]   # stage name -> its packed arrays, None where the stage is off
    num_logprobs: int        # top alternatives to return; -1 = no logprobs at all

    def active(self) -> list[str]:
        """Names of the stages on for this batch, in order (the compile key, for logs)."""
        return [s.name for s in STAGES if self.stages.get(s.name) is not None]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tokens", "logprobs", "top_ids", "top_logprobs"], meta_fields=[])
@dataclass
class SampleResult:
    tokens: jax.Array        # i32[B]
    logprobs: jax.Array      # f32[B] of the chosen token (zeros when not requested)
    top_ids: jax.Array       # i32[B, k]
    top_logprobs: jax.Array  # f32[B, k]


def _num_logprobs(seqs) -> int:
    asked = [s.params.logprobs for s in seqs if s.params.logprobs is not None]
    if not asked:
        return -1
    # Rounded to few values so the count does not multiply compiles.
    n = max(asked)
    return 0 if n == 0 else (5 if n <= 5 else 20)


def build_sampling(seqs: list, rows: int, shapes, step_offsets: list[int] | None = None,
                   times: PackTimes | None = None) -> SamplingArrays:
    """Per-row sampling arrays for `rows` padded rows; seqs fill the first len(seqs).

    shapes: step_inputs.Shapes (its history_len bounds the penalty history).
    step_offsets[i] is added to row i's output index (speculative rows lie ahead of the output).
    times: where to add each enabled stage's host packing time (the engine's metrics).
    """
    ctx = PackContext(list(seqs), rows, shapes.history_len, step_offsets)
    packed = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        packed[stage.name] = stage.pack(ctx)
        if times is not None and packed[stage.name] is not None:
            times.add(stage.name, time.perf_counter() - t0)
    return SamplingArrays(packed, _num_logprobs(seqs))


def process_logits(logits: jax.Array, arrays: SamplingArrays) -> jax.Array:
    """Every stage before the draw, in order: f32[B, V] -> f32[B, V]."""
    for stage in STAGES[:-1]:
        packed = arrays.stages[stage.name]
        if packed is not None:
            logits = stage.apply(logits, packed)
    return logits


def sample(logits: jax.Array, arrays: SamplingArrays) -> SampleResult:
    """logits: f32[B, V] -> SampleResult; pure, per-row parameters.

    Logprobs are those of the model's own distribution (raw logits), as vLLM returns by default.
    """
    B = logits.shape[0]
    logits = logits.astype(jnp.float32)
    last = STAGES[-1]
    tokens = last.apply(process_logits(logits, arrays), arrays.stages[last.name])
    if arrays.num_logprobs < 0:
        zeros = jnp.zeros((B,), jnp.float32)
        return SampleResult(tokens, zeros, jnp.zeros((B, 0), jnp.int32), jnp.zeros((B, 0), jnp.float32))
    k = arrays.num_logprobs
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    top_lp, top_ids = jax.lax.top_k(logprobs, k) if k else (jnp.zeros((B, 0)), jnp.zeros((B, 0), jnp.int32))
    return SampleResult(tokens, chosen, top_ids.astype(jnp.int32), top_lp)
