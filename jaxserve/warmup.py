"""Compile the common step shapes before serving, so the first requests do not pay for it.

Every decode bucket and every prefill token bucket, at the narrowest block table, plus the
greedy and sampling variants of the sampler. Padded batches point at reserved page 0 only.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from jaxserve.model.attention import ModelBatch
from jaxserve.step_inputs import build_sampling

log = logging.getLogger(__name__)


def _padding_batch(mode: str, tokens: int, seqs: int, width: int) -> ModelBatch:
    zeros = lambda n: np.zeros(n, np.int32)
    return ModelBatch(
        tokens=zeros(tokens), positions=zeros(tokens), slots=zeros(tokens),
        block_tables=np.zeros((seqs, width), np.int32), kv_lens=zeros(seqs),
        cu_q_lens=np.arange(seqs + 1, dtype=np.int32) if mode == "decode" else zeros(seqs + 1),
        logits_indices=zeros(seqs), mode=mode, max_q_len=1 if mode == "decode" else tokens)


def warmup_runner(runner, shapes) -> None:
    t0 = time.perf_counter()
    width = shapes.table_width(1)
    for B in shapes.decode_buckets:
        runner.run(_padding_batch("decode", B, B, width), build_sampling([], B, shapes))
    for T in shapes.prefill_buckets:
        runner.run(_padding_batch("prefill", T, 1, width), build_sampling([], 1, shapes))
    log.info("warmup compiled %d programs in %.1f s", runner.compiles.count, time.perf_counter() - t0)
