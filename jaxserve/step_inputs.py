"""StepPlan -> one padded ragged batch: the only place host state becomes model inputs.

A step's work (plain decodes, speculative verifies, prefill chunks) is packed into one
ModelBatch for one model pass: decode and verify rows first (num_short_seqs of them, each given
short_q_len token slots), then the prefill chunks. The logits rows the step needs follow the
same order: first one row per sampled sequence (plain decodes, then chunks), then every token
of the verify rows. Sizes are rounded up to buckets so the number of compiled programs stays
small and known (Shapes.step_shapes lists them all): decode slots come from the config's decode
buckets, prefill tokens from its prefill buckets, prefill slots are one or max_prefill_seqs,
and block-table widths powers of two. A step that mixes decodes with prefill chunks pads its
decode rows to one size (mixed_decode_slots, or the largest verify bucket when it verifies), so
mixing multiplies the prefill shapes by one or two, not by every decode bucket.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from jaxserve.model.attention import ModelBatch
from jaxserve.sampler import PackTimes, SamplingArrays, build_sampling
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


def _block_table(seqs_pages: list[list[int]], rows: int, width: int) -> np.ndarray:
    table = np.zeros((rows, width), np.int32)
    for i, pages in enumerate(seqs_pages):
        table[i, :len(pages)] = pages
    return table


@dataclass(frozen=True)
class Work:
    """One sequence's share of a step: a plain decode, a verify (draft set) or a prefill chunk."""
    seq: Sequence
    draft: list[int] | None = None       # proposed tokens after the pending one
    chunk: PrefillChunk | None = None
    feed: int = -1                       # the pending token is this row of the in-flight step's
                                         # sampled tokens (read on the device); -1: known here

    @property
    def start(self) -> int:
        return self.chunk.start if self.chunk is not None else self.seq.num_computed

    @property
    def ids(self) -> list[int]:
        if self.chunk is not None:
            return self.seq.all_ids[self.chunk.start:self.chunk.start + self.chunk.length]
        return [self.seq.all_ids[self.seq.num_computed]] + (self.draft or [])


@dataclass(frozen=True)
class StepShape:
    """The static layout of one step's batch (with a table width, its compile key)."""
    decode_slots: int     # short rows: plain decodes and verifies
    short_q_len: int      # token slots per short row: 1, or verify_q when the step verifies
    prefill_tokens: int   # token slots of the chunks (0: none)
    prefill_slots: int    # chunk rows (0: none)

    @property
    def tokens(self) -> int:
        return self.decode_slots * self.short_q_len + self.prefill_tokens

    @property
    def sample_rows(self) -> int:
        return self.decode_slots + self.prefill_slots

    @property
    def verify_rows(self) -> int:
        return self.decode_slots * self.short_q_len if self.short_q_len > 1 else 0


@dataclass(frozen=True)
class StepInputs:
    batch: ModelBatch
    sampling: SamplingArrays              # sample_rows rows: `sampled`, then padding
    sampled: list[Work]                   # plain decodes, then chunks
    verified: list[Work]                  # verify rows, in token-row order
    verify_sampling: SamplingArrays | None = None   # verify_rows rows (None: no verify rows)
    judged: np.ndarray | None = None      # i32[verify_rows] the draft token each row judges
    token_src: np.ndarray | None = None   # i32[T]: token t is row token_src[t] of the previous
                                          # step's sampled tokens (-1: batch.tokens[t]); None: all -1

    @property
    def sample_rows(self) -> int:
        """Leading logits rows the sampler reads (the verify rows, if any, follow them)."""
        return len(self.batch.logits_indices) - (0 if self.judged is None else len(self.judged))


@dataclass(frozen=True)
class Shapes:
    page_size: int
    max_pages_per_seq: int      # ceil(max_model_len / page_size)
    decode_buckets: tuple[int, ...]
    prefill_buckets: tuple[int, ...]
    max_prefill_seqs: int
    history_len: int            # width of the sampler's penalty history (max_model_len)
    spec_tokens: int = 0        # k of speculative decoding (0: off)
    verify_buckets: tuple[int, ...] = ()   # decode buckets a verifying step can have
    mixed_decode_slots: int = 0            # decode rows of a step with chunks (0: largest bucket)
    # One block-table width (max_pages_per_seq) for every batch: for attention whose cost does not
    # grow with the width (pallas_kernels.dispatch.reads_whole_table), it divides the programs
    # to build by the number of widths (5 for SmolLM2's 2,048 tokens) at no cost per step.
    single_table_width: bool = False

    @property
    def verify_q(self) -> int:
        """Token slots per short row of a verifying step: 1 + k, rounded to a power of two."""
        return pow2_at_least(1 + self.spec_tokens)

    def table_width(self, pages: int) -> int:
        if self.single_table_width:
            return self.max_pages_per_seq
        return min(pow2_at_least(pages, MIN_TABLE_PAGES), self.max_pages_per_seq)

    @property
    def table_widths(self) -> list[int]:
        """Every block-table width a batch can have."""
        widths = {self.table_width(1)}
        while max(widths) < self.max_pages_per_seq:
            widths.add(self.table_width(2 * max(widths)))
        return sorted(widths)

    def prefill_seqs(self, n: int) -> int:
        """Sequence slots of the chunks: one, or all of them (two shapes, not log2 many)."""
        return 1 if n == 1 else self.max_prefill_seqs

    def _mixed_slots(self, verifying: bool) -> int:
        if verifying:
            return self.verify_buckets[-1]
        return self.mixed_decode_slots or self.decode_buckets[-1]

    def step_shape(self, num_short: int, verifying: bool, chunk_tokens: int, num_chunks: int
                   ) -> StepShape:
        """The layout of a step with these rows; ValueError if none fits."""
        if verifying and not self.verify_buckets:
            raise ValueError("a verify row in a step of an engine without speculation")
        sq = self.verify_q if verifying else 1
        if not num_chunks:
            return StepShape(bucket(num_short, self.verify_buckets if verifying else self.decode_buckets),
                             sq, 0, 0)
        tokens, slots = bucket(chunk_tokens, self.prefill_buckets), self.prefill_seqs(num_chunks)
        if not num_short:
            return StepShape(0, 1, tokens, slots)
        ds = self._mixed_slots(verifying)
        if num_short > ds:
            raise ValueError(f"{num_short} decode rows exceed the {ds} of a mixed step")
        return StepShape(ds, sq, tokens, slots)

    def step_shapes(self) -> list[StepShape]:
        """Every layout step_shape can return (warmup compiles exactly these)."""
        shorts = [(b, 1) for b in self.decode_buckets] + [(b, self.verify_q) for b in self.verify_buckets]
        mixed = [(0, 1), (self._mixed_slots(False), 1)]
        if self.verify_buckets:
            mixed.append((self._mixed_slots(True), self.verify_q))
        chunks = [(t, n) for t in self.prefill_buckets
                  for n in sorted({self.prefill_seqs(1), self.prefill_seqs(2)})]
        return ([StepShape(d, q, 0, 0) for d, q in shorts]
                + [StepShape(d, q, t, n) for d, q in mixed for t, n in chunks])


Row = tuple[list[int], int, list[int]]   # a sequence's pages, first position, tokens this step


def _pack(short: list[Row], chunks: list[Row], shape: StepShape, width: int, page_size: int
          ) -> tuple[ModelBatch, list[int]]:
    """Rows -> the batch (logits_indices left empty), and each row's first token row.

    A padding short row of a one-token layout keeps its token slot (a dummy token at page 0
    with kv_len 0), so short row i is token i; other padding rows own no tokens.
    """
    ds, sq = shape.decode_slots, shape.short_q_len
    num_seqs = ds + shape.prefill_slots
    tokens, positions, slots = (np.zeros(shape.tokens, np.int32) for _ in range(3))
    kv_lens = np.zeros(num_seqs, np.int32)
    cu = np.zeros(num_seqs + 1, np.int32)
    rows = short + [None] * (ds - len(short)) + chunks
    firsts, offset = [], 0
    for i, row in enumerate(rows):
        if row is None:
            offset += 1 if sq == 1 else 0
        else:
            pages, start, ids = row
            n = len(ids)
            pos = np.arange(start, start + n)
            tokens[offset:offset + n] = ids
            positions[offset:offset + n] = pos
            slots[offset:offset + n] = np.asarray(pages, np.int32)[pos // page_size] * page_size + pos % page_size
            kv_lens[i] = start + n
            firsts.append(offset)
            offset += n
        cu[i + 1] = offset
    cu[len(rows) + 1:] = offset
    tables = _block_table([r[0] if r else [] for r in rows], num_seqs, width)
    batch = ModelBatch(tokens=tokens, positions=positions, slots=slots, block_tables=tables,
                       kv_lens=kv_lens, cu_q_lens=cu, logits_indices=np.zeros(0, np.int32),
                       max_q_len=max(shape.prefill_tokens, 1), num_short_seqs=ds, short_q_len=sq)
    return batch, firsts


def pack_step(work: list[Work], shapes: Shapes, shape: StepShape | None = None,
              width: int | None = None, times: PackTimes | None = None) -> StepInputs:
    """One step's work -> its one batch and the sampling inputs of the rows it reads back.

    shape, width: force a layout (warmup packs no work into each); default: the smallest fit.
    times: where the sampler adds its stages' host packing time (the engine's metrics).
    """
    short = [w for w in work if w.chunk is None]
    chunks = [w for w in work if w.chunk is not None]
    verified = [w for w in short if w.draft]
    if shape is None:
        shape = shapes.step_shape(len(short), bool(verified), sum(w.chunk.length for w in chunks),
                                  len(chunks))
    if width is None:
        width = shapes.table_width(max((len(w.seq.pages) for w in work), default=1))
    rows = lambda ws: [(w.seq.pages, w.start, w.ids) for w in ws]
    batch, firsts = _pack(rows(short), rows(chunks), shape, width, shapes.page_size)
    short_first, chunk_first = firsts[:len(short)], firsts[len(short):]

    # Logits rows: one per sampled sequence (its last token), then every token of each verify.
    plain = [(w, f) for w, f in zip(short, short_first) if not w.draft]
    sampled = [w for w, _ in plain] + chunks
    sample_idx = np.zeros(shape.sample_rows, np.int32)
    for i, (w, first) in enumerate(zip(sampled, [f for _, f in plain] + chunk_first)):
        sample_idx[i] = first + len(w.ids) - 1
    verify_idx = np.zeros(shape.verify_rows, np.int32)
    row = 0
    for w, first in zip(short, short_first):
        if w.draft:
            verify_idx[row:row + len(w.ids)] = np.arange(first, first + len(w.ids))
            row += len(w.ids)
    batch.logits_indices = np.concatenate([sample_idx, verify_idx])
    token_src = None
    if any(w.feed >= 0 for w in short):
        token_src = np.full(shape.tokens, -1, np.int32)
        for w, first in zip(short, short_first):
            token_src[first] = w.feed

    inputs = dict(batch=batch, sampled=sampled, verified=verified, token_src=token_src,
                  sampling=build_sampling([w.seq for w in sampled], shape.sample_rows, shapes,
                                          times=times))
    if shape.verify_rows:
        row_seqs, offsets, judged = verify_rows([w.seq for w in verified],
                                                [w.draft for w in verified], shape.verify_rows)
        inputs.update(judged=judged, verify_sampling=build_sampling(
            row_seqs, shape.verify_rows, shapes, step_offsets=offsets, times=times))
    return StepInputs(**inputs)


def build_decode_at(seqs: list[Sequence], tokens: list[int], positions: list[int],
                    shapes: Shapes) -> ModelBatch:
    """One given token per sequence at a given position (a draft model runs ahead this way)."""
    shape = shapes.step_shape(len(seqs), False, 0, 0)
    width = shapes.table_width(max(len(s.pages) for s in seqs))
    batch, _ = _pack([(s.pages, p, [t]) for s, t, p in zip(seqs, tokens, positions)], [], shape,
                     width, shapes.page_size)
    batch.logits_indices = np.arange(shape.decode_slots, dtype=np.int32)
    return batch


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
