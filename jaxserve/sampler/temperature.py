"""Stage 3, temperature: divide each sampled row's logits by its temperature (greedy rows by 1, exactly)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import numpy as np

from jaxserve.sampler.stage import PackContext, Stage


@functools.partial(jax.tree_util.register_dataclass, data_fields=["divisor"], meta_fields=[])
@dataclass
class TemperatureArrays:
    divisor: jax.Array   # f32[B]: the row's temperature, 1 for greedy and padding rows


def sampled_rows(ctx: PackContext) -> np.ndarray:
    """bool[rows]: rows that draw at random (temperature > 0); padding rows are greedy."""
    out = np.zeros(ctx.rows, np.bool_)
    for i, s in enumerate(ctx.seqs):
        out[i] = s.params.temperature > 0
    return out


def pack(ctx: PackContext) -> TemperatureArrays | None:
    sampled = sampled_rows(ctx)
    if not sampled.any():
        return None
    divisor = np.ones(ctx.rows, np.float32)
    for i, s in enumerate(ctx.seqs):
        if sampled[i]:
            divisor[i] = s.params.temperature
    return TemperatureArrays(divisor)


def apply(logits: jax.Array, t: TemperatureArrays) -> jax.Array:
    return logits / t.divisor[:, None]


STAGE = Stage("temperature", pack, apply)
