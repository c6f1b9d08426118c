"""StepPlan -> padded numpy batches: the only place host state becomes model inputs.

Sizes are rounded up to buckets so the number of compiled programs stays small and known:
decode batch B and prefill token count T come from the config, prefill sequence count N and
block-table width M are powers of two.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from jaxserve.model.attention import ModelBatch
from jaxserve.sampling import SamplingArrays
from jaxserve.scheduler import PrefillChunk
from jaxserve.sequence import Sequence

MIN_TABLE_PAGES = 8


def bucket(value: int, buckets) -> int:
    i = bisect.bisect_left(buckets, value)
    if i == len(buckets):
        raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def pow2_at_least(n: int, floor: int = 1) -> int:
    return max(floor, 1 << max(0, (n - 1).bit_length()))


@dataclass(frozen=True)
class Shapes:
    page_size: int
    max_pages_per_seq: int      # ceil(max_model_len / page_size)
    decode_buckets: tuple[int, ...]
    prefill_buckets: tuple[int, ...]
    max_prefill_seqs: int
    history_len: int            # width of the penalty history (max_model_len)

    def table_width(self, pages: int) -> int:
        return min(pow2_at_least(pages, MIN_TABLE_PAGES), self.max_pages_per_seq)


def _block_table(seqs_pages: list[list[int]], rows: int, width: int) -> np.ndarray:
    table = np.zeros((rows, width), np.int32)
    for i, pages in enumerate(seqs_pages):
        table[i, :len(pages)] = pages
    return table


def build_decode(seqs: list[Sequence], shapes: Shapes) -> ModelBatch:
    S = shapes.page_size
    B = bucket(len(seqs), shapes.decode_buckets)
    M = shapes.table_width(max(len(s.pages) for s in seqs))
    tokens = np.zeros(B, np.int32)
    positions = np.zeros(B, np.int32)
    slots = np.zeros(B, np.int32)
    kv_lens = np.zeros(B, np.int32)
    for i, s in enumerate(seqs):
        pos = s.num_computed
        tokens[i] = s.all_ids[pos]
        positions[i] = pos
        slots[i] = s.pages[pos // S] * S + pos % S
        kv_lens[i] = pos + 1
    return ModelBatch(
        tokens=tokens, positions=positions, slots=slots,
        block_tables=_block_table([s.pages for s in seqs], B, M), kv_lens=kv_lens,
        cu_q_lens=np.arange(B + 1, dtype=np.int32), logits_indices=np.arange(B, dtype=np.int32),
        mode="decode", max_q_len=1)


def build_prefill(chunks: list[PrefillChunk], shapes: Shapes) -> ModelBatch:
    S = shapes.page_size
    total = sum(c.length for c in chunks)
    T = bucket(total, shapes.prefill_buckets)
    N = min(pow2_at_least(len(chunks)), shapes.max_prefill_seqs)
    M = shapes.table_width(max(len(c.seq.pages) for c in chunks))
    tokens = np.zeros(T, np.int32)
    positions = np.zeros(T, np.int32)
    slots = np.zeros(T, np.int32)
    kv_lens = np.zeros(N, np.int32)
    cu = np.full(N + 1, total, np.int32)
    cu[0] = 0
    logits_indices = np.zeros(N, np.int32)
    offset = 0
    for i, c in enumerate(chunks):
        ids = c.seq.all_ids
        pos = np.arange(c.start, c.start + c.length)
        pages = np.asarray(c.seq.pages, np.int32)
        tokens[offset:offset + c.length] = ids[c.start:c.start + c.length]
        positions[offset:offset + c.length] = pos
        slots[offset:offset + c.length] = pages[pos // S] * S + pos % S
        offset += c.length
        cu[i + 1] = offset
        kv_lens[i] = c.start + c.length
        logits_indices[i] = offset - 1
    return ModelBatch(
        tokens=tokens, positions=positions, slots=slots,
        block_tables=_block_table([c.seq.pages for c in chunks], N, M), kv_lens=kv_lens,
        cu_q_lens=cu, logits_indices=logits_indices, mode="prefill", max_q_len=T)


def build_sampling(seqs: list[Sequence], rows: int, shapes: Shapes) -> SamplingArrays:
    """Per-row sampling parameters for `rows` padded rows; seqs fill the first len(seqs)."""
    f32 = lambda v: np.full(rows, v, np.float32)
    temperature, top_p, min_p = f32(0.0), f32(1.0), f32(0.0)
    rep, pres, freq = f32(1.0), f32(0.0), f32(0.0)
    top_k = np.zeros(rows, np.int32)
    seeds = np.zeros(rows, np.uint32)
    steps = np.zeros(rows, np.int32)
    num_logprobs = -1
    for i, s in enumerate(seqs):
        p = s.params
        temperature[i], top_p[i], min_p[i] = p.temperature, p.top_p, p.min_p
        top_k[i] = max(p.top_k, 0)
        rep[i], pres[i], freq[i] = p.repetition_penalty, p.presence_penalty, p.frequency_penalty
        seeds[i] = s.seed & 0xFFFFFFFF
        steps[i] = len(s.output_ids)
        if p.logprobs is not None:
            num_logprobs = max(num_logprobs, p.logprobs)
    use_penalties = bool(np.any(rep != 1.0) or np.any(pres != 0.0) or np.any(freq != 0.0))
    if use_penalties:
        history = np.full((rows, shapes.history_len), -1, np.int32)
        num_prompt = np.zeros(rows, np.int32)
        for i, s in enumerate(seqs):
            ids = s.all_ids[-shapes.history_len:]
            history[i, :len(ids)] = ids
            num_prompt[i] = len(s.prompt_ids)
    else:
        history = np.zeros((rows, 1), np.int32)
        num_prompt = np.zeros(rows, np.int32)
    do_sample = bool(np.any(temperature > 0))
    use_filters = do_sample and bool(np.any(top_k > 0) or np.any(top_p < 1.0) or np.any(min_p > 0))
    # Round the logprob count to few values so it does not multiply compiles.
    if num_logprobs >= 0:
        num_logprobs = 0 if num_logprobs == 0 else (5 if num_logprobs <= 5 else 20)
    return SamplingArrays(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=rep,
        presence_penalty=pres, frequency_penalty=freq, seeds=seeds, steps=steps, history=history,
        num_prompt=num_prompt, do_sample=do_sample, use_filters=use_filters,
        use_penalties=use_penalties, num_logprobs=num_logprobs)
