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
    history_len: int            # width of the sampler's penalty history (max_model_len)
    spec_tokens: int = 0        # k of speculative decoding (0: off)

    @property
    def verify_q(self) -> int:
        """Query slots per sequence in a verify batch: 1 + k, rounded to a power of two."""
        return pow2_at_least(1 + self.spec_tokens)

    def table_width(self, pages: int) -> int:
        return min(pow2_at_least(pages, MIN_TABLE_PAGES), self.max_pages_per_seq)

    @property
    def table_widths(self) -> list[int]:
        """Every block-table width a batch can have."""
        widths = {self.table_width(1)}
        while max(widths) < self.max_pages_per_seq:
            widths.add(self.table_width(2 * max(widths)))
        return sorted(widths)

    def prefill_seqs(self, n: int) -> int:
        """Sequence slots of a prefill batch: one, or all of them (two shapes, not log2 many)."""
        return 1 if n == 1 else self.max_prefill_seqs


def _block_table(seqs_pages: list[list[int]], rows: int, width: int) -> np.ndarray:
    table = np.zeros((rows, width), np.int32)
    for i, pages in enumerate(seqs_pages):
        table[i, :len(pages)] = pages
    return table


def build_decode(seqs: list[Sequence], shapes: Shapes) -> ModelBatch:
    """Each sequence's pending token (its last), one row per sequence."""
    return build_decode_at(seqs, [s.all_ids[s.num_computed] for s in seqs],
                           [s.num_computed for s in seqs], shapes)


def build_decode_at(seqs: list[Sequence], tokens: list[int], positions: list[int],
                    shapes: Shapes) -> ModelBatch:
    """One given token per sequence at a given position (a draft model runs ahead this way)."""
    S = shapes.page_size
    B = bucket(len(seqs), shapes.decode_buckets)
    M = shapes.table_width(max(len(s.pages) for s in seqs))
    tok = np.zeros(B, np.int32)
    pos = np.zeros(B, np.int32)
    slots = np.zeros(B, np.int32)
    kv_lens = np.zeros(B, np.int32)
    for i, (s, t, p) in enumerate(zip(seqs, tokens, positions)):
        tok[i], pos[i] = t, p
        slots[i] = s.pages[p // S] * S + p % S
        kv_lens[i] = p + 1
    return ModelBatch(
        tokens=tok, positions=pos, slots=slots,
        block_tables=_block_table([s.pages for s in seqs], B, M), kv_lens=kv_lens,
        cu_q_lens=np.arange(B + 1, dtype=np.int32), logits_indices=np.arange(B, dtype=np.int32),
        mode="decode", max_q_len=1)


def _pack(items: list[tuple[Sequence, int, list[int]]], shapes: Shapes, T: int, N: int,
          all_logits: bool, max_q_len: int) -> ModelBatch:
    """Pack (seq, first position, tokens) chunks into one ragged prefill-mode batch."""
    S = shapes.page_size
    M = shapes.table_width(max(len(seq.pages) for seq, _, _ in items))
    tokens = np.zeros(T, np.int32)
    positions = np.zeros(T, np.int32)
    slots = np.zeros(T, np.int32)
    kv_lens = np.zeros(N, np.int32)
    total = sum(len(ids) for _, _, ids in items)
    cu = np.full(N + 1, total, np.int32)
    cu[0] = 0
    last_rows = np.zeros(N, np.int32)
    offset = 0
    for i, (seq, start, ids) in enumerate(items):
        n = len(ids)
        pos = np.arange(start, start + n)
        pages = np.asarray(seq.pages, np.int32)
        tokens[offset:offset + n] = ids
        positions[offset:offset + n] = pos
        slots[offset:offset + n] = pages[pos // S] * S + pos % S
        offset += n
        cu[i + 1] = offset
        kv_lens[i] = start + n
        last_rows[i] = offset - 1
    return ModelBatch(
        tokens=tokens, positions=positions, slots=slots,
        block_tables=_block_table([seq.pages for seq, _, _ in items], N, M), kv_lens=kv_lens,
        cu_q_lens=cu, logits_indices=np.arange(T, dtype=np.int32) if all_logits else last_rows,
        mode="prefill", max_q_len=max_q_len)


def build_prefill(chunks: list[PrefillChunk], shapes: Shapes) -> ModelBatch:
    """Prompt chunks; logits only at each chunk's last token."""
    T = bucket(sum(c.length for c in chunks), shapes.prefill_buckets)
    N = shapes.prefill_seqs(len(chunks))
    items = [(c.seq, c.start, c.seq.all_ids[c.start:c.start + c.length]) for c in chunks]
    return _pack(items, shapes, T, N, all_logits=False, max_q_len=T)


def build_verify(seqs: list[Sequence], drafts: list[list[int]], shapes: Shapes) -> ModelBatch:
    """Each sequence's pending token followed by its draft; logits at every token (row = token).

    Shapes depend only on the decode bucket and the table width (T = N x verify_q), so warmup
    can compile them all; the small static query bound keeps the reference's scores small.
    """
    N = bucket(len(seqs), shapes.decode_buckets)
    items = [(s, s.num_computed, [s.all_ids[s.num_computed]] + d) for s, d in zip(seqs, drafts)]
    return _pack(items, shapes, N * shapes.verify_q, N, all_logits=True, max_q_len=shapes.verify_q)


def verify_rows(seqs: list[Sequence], drafts: list[list[int]], rows: int
                ) -> tuple[list[Sequence], list[int], np.ndarray]:
    """Per token row of a verify batch: its sequence, its output index, the draft it judges."""
    row_seqs, offsets = [], []
    judged = np.full(rows, -1, np.int32)
    for s, d in zip(seqs, drafts):
        for j in range(len(d) + 1):
            if j < len(d):
                judged[len(row_seqs)] = d[j]
            row_seqs.append(s)
            offsets.append(j)
    return row_seqs, offsets, judged
