"""The one place a kernel backend is chosen.

impl="auto" picks by the default JAX backend: cpu -> xla (the references' math in blocks, see
blocked.py), gpu -> triton, tpu -> mosaic. "reference" forces the spec itself.
A forced impl that cannot run here raises; nothing ever falls back silently to another backend.
Pages stored as bf16 bits (uint16, see common.bf16_view) reach the Pallas kernels as bf16.
Kernel modules are imported only when chosen, so this package imports (and the reference runs)
without a GPU or TPU toolchain. A Mosaic-GPU variant would be one more entry in _MODULES plus a
file per kernel; callers would not change.
"""
from __future__ import annotations

import importlib

import jax

from pallas_kernels.common import bf16_view

IMPLS = ("auto", "reference", "xla", "triton", "mosaic")
_AUTO = {"cpu": "xla", "gpu": "triton", "cuda": "triton", "tpu": "mosaic"}
_NEEDS_PLATFORM = {"triton": "gpu", "mosaic": "tpu"}   # when not interpreted
_MODULES = {"reference": "reference", "xla": "xla", "triton": "triton", "mosaic": "mosaic"}


def choose_impl(impl: str, interpret: bool = False) -> str:
    """Resolves impl to a concrete backend name, or raises if it cannot run on this platform."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    platform = jax.default_backend()
    if impl == "auto":
        if platform not in _AUTO:
            raise RuntimeError(f"no kernel backend for platform {platform!r}; pass impl='reference'")
        return _AUTO[platform]
    needed = _NEEDS_PLATFORM.get(impl)
    if needed is not None and not interpret and _AUTO.get(platform) != impl:
        raise RuntimeError(f"impl={impl!r} needs a {needed.upper()} (or interpret=True); "
                           f"the default backend here is {platform!r}")
    return impl


def reads_whole_table(impl: str, interpret: bool = False) -> bool:
    """Whether an implementation's cost grows with the block table's width, not only with the
    pages the sequences hold. The blocked XLA path stops at the last page any row needs, so a
    caller may give it one full-width table shape; the references gather the whole table and the
    GPU decode kernel splits its key loop over the width, so those want tables cut to size."""
    return choose_impl(impl, interpret) != "xla"


def _kernel_module(kernel: str, impl: str):
    return importlib.import_module(f"pallas_kernels.{kernel}.{_MODULES[impl]}")


def paged_decode_attention(q, k_pages, v_pages, block_tables, lengths, *, scale=None,
                           soft_cap=None, sliding_window=None, k_scales=None, v_scales=None,
                           impl: str = "auto", interpret: bool = False):
    """Paged decode attention on the chosen backend; see paged_decode/reference.py for the spec.

    Args:
      q: [B, H, D]; k_pages, v_pages: [P, S, K, D]; block_tables: i32[B, M]; lengths: i32[B].
      scale, soft_cap, sliding_window, k_scales, v_scales: see the reference.
      impl: auto | reference | xla | triton | mosaic.
      interpret: run a Pallas kernel in interpret mode (any platform; slow, for tests).

    Returns:
      [B, H, D] in q.dtype; rows with length 0 are zeros.
    """
    chosen = choose_impl(impl, interpret)
    fn = _kernel_module("paged_decode", chosen).paged_decode_attention
    kwargs = dict(scale=scale, soft_cap=soft_cap, sliding_window=sliding_window,
                  k_scales=k_scales, v_scales=v_scales)
    if chosen not in ("reference", "xla"):
        kwargs["interpret"] = interpret
        k_pages, v_pages = bf16_view(k_pages), bf16_view(v_pages)
    return fn(q, k_pages, v_pages, block_tables, lengths, **kwargs)


def ragged_prefill_attention(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, *,
                             max_q_len: int, scale=None, soft_cap=None, sliding_window=None,
                             k_scales=None, v_scales=None, k_new=None, v_new=None,
                             impl: str = "auto", interpret: bool = False):
    """Ragged causal prefill attention on the chosen backend; see ragged_prefill/reference.py.

    Args:
      q: [T, H, D]; k_pages, v_pages: [P, S, K, D]; block_tables: i32[N, M];
      cu_q_lens: i32[N+1]; kv_lens: i32[N]; max_q_len: static bound on chunk lengths.
      scale, soft_cap, sliding_window, k_scales, v_scales: see the reference.
      k_new, v_new: optional [T, K, D], the step's own K/V (already in the pages). The xla
        backend reads a lone uncached chunk from them instead of the pages; others ignore them.
      impl: auto | reference | xla | triton | mosaic.
      interpret: run a Pallas kernel in interpret mode (any platform; slow, for tests).

    Returns:
      [T, H, D] in q.dtype; padding rows are zeros.
    """
    chosen = choose_impl(impl, interpret)
    fn = _kernel_module("ragged_prefill", chosen).ragged_prefill_attention
    kwargs = dict(max_q_len=max_q_len, scale=scale, soft_cap=soft_cap,
                  sliding_window=sliding_window, k_scales=k_scales, v_scales=v_scales)
    return _call_ragged(fn, chosen, q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, kwargs,
                        k_new, v_new, interpret)


def ragged_paged_attention(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, *,
                           num_short_seqs: int, short_q_len: int, max_q_len: int, scale=None,
                           soft_cap=None, sliding_window=None, k_scales=None, v_scales=None,
                           k_new=None, v_new=None, impl: str = "auto", interpret: bool = False):
    """One step's mixed batch (decode, verify and prefill rows) on the chosen backend; see
    ragged_paged/reference.py for the spec and the short/long split.

    Args:
      q: [T, H, D]; k_pages, v_pages: [P, S, K, D]; block_tables: i32[N, M];
      cu_q_lens: i32[N+1]; kv_lens: i32[N].
      num_short_seqs, short_q_len: the first num_short_seqs sequences have at most short_q_len
        queries each (exactly one when short_q_len == 1); max_q_len bounds the others. Static.
      scale, soft_cap, sliding_window, k_scales, v_scales: see the reference.
      k_new, v_new: optional [T, K, D], the step's own K/V (already in the pages); only the xla
        backend reads them (a lone fresh prefill chunk), the others ignore them.
      impl: auto | reference | xla | triton | mosaic.
      interpret: run a Pallas kernel in interpret mode (any platform; slow, for tests).

    Returns:
      [T, H, D] in q.dtype; padding rows are zeros.
    """
    chosen = choose_impl(impl, interpret)
    fn = _kernel_module("ragged_paged", chosen).ragged_paged_attention
    kwargs = dict(num_short_seqs=num_short_seqs, short_q_len=short_q_len, max_q_len=max_q_len,
                  scale=scale, soft_cap=soft_cap, sliding_window=sliding_window,
                  k_scales=k_scales, v_scales=v_scales)
    return _call_ragged(fn, chosen, q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, kwargs,
                        k_new, v_new, interpret)


def _call_ragged(fn, chosen: str, q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, kwargs: dict,
                 k_new, v_new, interpret: bool):
    """The backend-specific extras of the two ragged entry points: only xla reads the step's own
    K/V, only the Pallas kernels take `interpret` and bf16 pages (as their uint16 bits' view)."""
    if chosen == "xla":
        kwargs.update(k_new=k_new, v_new=v_new)
    if chosen not in ("reference", "xla"):
        kwargs["interpret"] = interpret
        k_pages, v_pages = bf16_view(k_pages), bf16_view(v_pages)
    return fn(q, k_pages, v_pages, block_tables, cu_q_lens, kv_lens, **kwargs)
