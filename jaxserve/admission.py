"""Admission: the checks a request must pass before it is queued, in one place.

The engine, its thread wrapper (AsyncEngine), the disaggregated workers and the router all refuse
the same requests with the same messages, because they all call `check_request`. Each passes the
limits it knows: the router has no vocabulary or cache size (the workers check those on arrival).
Raises ValueError naming the field; the servers answer it with a 400.
"""
from __future__ import annotations

from jaxserve.sampling_params import SamplingParams


def check_request(prompt_token_ids: list[int], params: SamplingParams, *, max_model_len: int,
                  max_num_seqs: int | None = None, vocab_size: int | None = None,
                  kv_capacity_tokens: int | None = None) -> None:
    """Raise ValueError naming the field if the request can never be served under these limits."""
    params.validate()
    if max_num_seqs is not None and params.n > max_num_seqs:   # its n sequences never run together
        raise ValueError(f"n must be <= scheduler.max_num_seqs ({max_num_seqs}), got {params.n}")
    n = len(prompt_token_ids)
    if not n:
        raise ValueError("prompt must not be empty, got 0 tokens")
    if vocab_size is not None and any(not isinstance(t, int) or not 0 <= t < vocab_size
                                      for t in prompt_token_ids):
        raise ValueError(f"prompt holds token ids outside the vocabulary [0, {vocab_size})")
    if n >= max_model_len:
        raise ValueError(f"prompt has {n} tokens; model.max_model_len is {max_model_len}, "
                         f"which must leave room for at least one output token")
    if kv_capacity_tokens is not None and n + 1 > kv_capacity_tokens:
        raise ValueError(f"prompt has {n} tokens but the KV cache holds only {kv_capacity_tokens} "
                         f"(cache.num_pages x cache.page_size)")
