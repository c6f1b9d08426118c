"""Tuned block sizes for the ragged prefill kernels: data only, looked up by the kernels.

block_q: query tokens per program; block_kv: K/V tokens per loop step (pages need not divide it).
num_warps, num_stages: Triton launch parameters.
Tuned on an H100 SXM with tools/bench_kernels.py (see docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrefillBlockSizes:
    block_q: int = 64
    block_kv: int = 64
    num_warps: int = 4
    num_stages: int = 2


# (head_dim, kv dtype name) -> sizes; anything missing gets PrefillBlockSizes().
TRITON = {
    (64, "bfloat16"): PrefillBlockSizes(block_q=128, block_kv=64, num_warps=4, num_stages=3),
    (128, "bfloat16"): PrefillBlockSizes(block_q=128, block_kv=64, num_warps=4, num_stages=2),
    (64, "float32"): PrefillBlockSizes(block_q=64, block_kv=32, num_warps=4, num_stages=2),
    (128, "float32"): PrefillBlockSizes(block_q=64, block_kv=32, num_warps=4, num_stages=2),
    (64, "int8"): PrefillBlockSizes(block_q=128, block_kv=64, num_warps=4, num_stages=3),
    (128, "int8"): PrefillBlockSizes(block_q=128, block_kv=64, num_warps=8, num_stages=3),
}


def triton_block_sizes(head_dim: int, kv_dtype: str) -> PrefillBlockSizes:
    return TRITON.get((head_dim, kv_dtype), PrefillBlockSizes())
