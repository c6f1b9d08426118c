"""Ragged paged attention on the mosaic Pallas kernels: two calls behind the one interface.

Same arguments and result as reference.ragged_paged_attention, plus `interpret`;
see two_calls.py for the split.
"""
from __future__ import annotations

from pallas_kernels.paged_decode import mosaic as decode_impl
from pallas_kernels.ragged_paged.two_calls import pallas_two_calls
from pallas_kernels.ragged_prefill import mosaic as prefill_impl

ragged_paged_attention = pallas_two_calls(decode_impl, prefill_impl)
