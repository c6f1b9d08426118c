"""What every sampler stage is: a host-side packer and a device-side function, side by side.

    pack(ctx)          PackContext (host Sequences) -> the stage's numpy arrays, or None when
                       no row of the batch needs the stage
    apply(logits, p)   f32[B, V], those arrays (now device arrays) -> f32[B, V]

None is part of the pytree structure that jit keys on, so a stage that is off for a batch is
not traced into that batch's program at all: it costs nothing, as a static flag would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# Masked logits get a large finite negative, not -inf: a row whose every token were masked
# would otherwise turn into NaN after softmax.
MASKED = -1e30


@dataclass
class PackTimes:
    """Host seconds spent packing each stage, and how many batches had it on (engine metrics)."""

    seconds: dict[str, float] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.batches[name] = self.batches.get(name, 0) + 1


@dataclass(frozen=True)
class PackContext:
    """What a stage packs from: the batch's sequences (first rows) and the padded row count.

    step_offsets[i] is added to row i's output index (speculative rows lie ahead of the output).
    """

    seqs: list          # list[Sequence]
    rows: int
    history_len: int    # width of the penalty history (max_model_len)
    step_offsets: list[int] | None = None


class Stage(NamedTuple):
    name: str
    pack: Callable[[PackContext], Any]        # -> pytree of numpy arrays | None (stage off)
    apply: Callable[[Any, Any], Any]          # (logits f32[B, V], packed) -> f32[B, V] (draw: i32[B])


def in_blocks(x: jax.Array, size: int, fill: float) -> jax.Array:
    """[B, V] -> [B, ceil(V / size), size], the tail padded with fill (the filters' candidate
    search and the draw both work block by block)."""
    B, V = x.shape
    n = -(-V // size)
    return jnp.pad(x, ((0, 0), (0, n * size - V)), constant_values=fill).reshape(B, n, size)
