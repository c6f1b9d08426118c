"""Tuned block sizes for the paged decode kernels: data only, looked up by the kernels.

block_kv: tokens of K/V one loop step loads (any multiple of 16; pages need not divide it).
num_warps, num_stages: Triton launch parameters.
heads_fastest: launch the kv heads of a sequence next to each other (grid (K, B, splits)).
Tuned on an H100 SXM with tools/bench_kernels.py (see docs/benchmarks.md); other GPUs use them too.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeBlockSizes:
    block_kv: int = 64
    num_warps: int = 4
    num_stages: int = 2
    heads_fastest: bool = False


# (head_dim, kv dtype name) -> sizes; anything missing gets DecodeBlockSizes().
TRITON = {
    (64, "bfloat16"): DecodeBlockSizes(block_kv=128, num_warps=4, num_stages=2),
    (128, "bfloat16"): DecodeBlockSizes(block_kv=128, num_warps=8, num_stages=4, heads_fastest=True),
    (64, "float32"): DecodeBlockSizes(block_kv=64, num_warps=4, num_stages=2),
    (128, "float32"): DecodeBlockSizes(block_kv=32, num_warps=4, num_stages=2),
    (64, "int8"): DecodeBlockSizes(block_kv=128, num_warps=4, num_stages=2),
    (128, "int8"): DecodeBlockSizes(block_kv=64, num_warps=4, num_stages=2),
}

# Programs to aim for when splitting a sequence's pages across programs (split-K): about two
# waves on an H100's 132 SMs. Small batches are otherwise latency bound on a handful of SMs.
TARGET_PROGRAMS = 264


def triton_block_sizes(head_dim: int, kv_dtype: str) -> DecodeBlockSizes:
    return TRITON.get((head_dim, kv_dtype), DecodeBlockSizes())
