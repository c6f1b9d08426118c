"""Attention kernels for paged KV caches, importable without jaxserve.

Public names:
  paged_decode_attention    one query token per sequence over its pages (decode steps)
  ragged_prefill_attention  packed causal query chunks over their pages (prefill steps)
  ragged_paged_attention    one step's mixed batch: decode, verify and prefill rows in one call

Each takes impl= auto | reference | triton | mosaic; pallas_kernels.dispatch chooses.
"""
from pallas_kernels.dispatch import (paged_decode_attention, ragged_paged_attention,
                                     ragged_prefill_attention)

__all__ = ["paged_decode_attention", "ragged_paged_attention", "ragged_prefill_attention"]
