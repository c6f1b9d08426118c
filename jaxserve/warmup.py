"""Compile every step shape before serving, so no request pays for a compile.

Decode: every batch bucket x every block-table width. Prefill: every token bucket x both
sequence-slot counts x every width. Verify (speculation on): the batch buckets a verify batch can
have (speculative.max_batch_for_speculation bounds it) x every width. The greedy sampler for each
row count comes with them.
Padded batches point at reserved page 0 only, so the pools' contents do not matter.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from jaxserve.model.attention import ModelBatch
from jaxserve.sampler import build_sampling

log = logging.getLogger(__name__)


def _padding_batch(mode: str, tokens: int, seqs: int, width: int, max_q_len: int | None = None,
                   all_logits: bool = False) -> ModelBatch:
    zeros = lambda n: np.zeros(n, np.int32)
    if max_q_len is None:
        max_q_len = 1 if mode == "decode" else tokens
    return ModelBatch(
        tokens=zeros(tokens), positions=zeros(tokens), slots=zeros(tokens),
        block_tables=np.zeros((seqs, width), np.int32), kv_lens=zeros(seqs),
        cu_q_lens=np.arange(seqs + 1, dtype=np.int32) if mode == "decode" else zeros(seqs + 1),
        logits_indices=zeros(tokens if all_logits else seqs), mode=mode, max_q_len=max_q_len)


def warmup_runner(runner, shapes, verify_buckets: tuple[int, ...] | None = None,
                  model_only_verify: bool = False) -> None:
    """Compile runner's steps for every shape; verify batches too when speculation is on.

    verify_buckets: the decode buckets a verify batch can occupy (Engine.verify_buckets);
    None: all of them when shapes.spec_tokens is set.
    model_only_verify: a draft model only runs the model over verify batches, never the verifier.
    """
    t0 = time.perf_counter()
    if verify_buckets is None:
        verify_buckets = shapes.decode_buckets if shapes.spec_tokens else ()
    for width in shapes.table_widths:
        for B in shapes.decode_buckets:
            runner.run(_padding_batch("decode", B, B, width), build_sampling([], B, shapes))
            if B in verify_buckets:
                rows = B * shapes.verify_q
                batch = _padding_batch("prefill", rows, B, width, max_q_len=shapes.verify_q,
                                       all_logits=True)
                if model_only_verify:
                    runner.forward_only(batch)
                else:
                    runner.run_verify(batch, build_sampling([], rows, shapes), np.full(rows, -1, np.int32))
        for T in shapes.prefill_buckets:
            for N in sorted({shapes.prefill_seqs(1), shapes.prefill_seqs(2)}):
                runner.run(_padding_batch("prefill", T, N, width), build_sampling([], N, shapes))
    log.info("warmup compiled %d programs in %.1f s", runner.compiles.count, time.perf_counter() - t0)
