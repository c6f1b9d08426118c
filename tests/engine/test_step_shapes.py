"""The packer's layouts: every step a scheduler can produce packs into a shape warmup compiles,
decode, verify and chunk rows land where the attention interface expects them."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxserve.outputs import RequestMetrics
from jaxserve.sampling_params import SamplingParams
from jaxserve.scheduler import PrefillChunk
from jaxserve.sequence import Sequence
from jaxserve.step_inputs import Shapes, Work, pack_step

SHAPES = Shapes(page_size=4, max_pages_per_seq=16, decode_buckets=(2, 4, 8), prefill_buckets=(8, 16),
                max_prefill_seqs=2, history_len=64, spec_tokens=3, verify_buckets=(2, 4),
                mixed_decode_slots=8)


def _seq(i: int, prompt_len: int, computed: int, outputs: int = 0) -> Sequence:
    seq = Sequence(seq_id=i, request_id=f"r{i}", index=0, prompt_ids=list(range(1, prompt_len + 1)),
                   params=SamplingParams(max_tokens=8), seed=i, metrics=RequestMetrics(arrival_s=0.0),
                   output_ids=list(range(100, 100 + outputs)))
    seq.num_computed = computed
    seq.pages = list(range(10 * i + 1, 10 * i + 1 + -(-(seq.num_tokens + 4) // 4)))
    return seq


def _work(num_decode: int, num_verify: int, chunk_lens: list[int]) -> list[Work]:
    work = [Work(_seq(i, 5, 5 + 2, outputs=3)) for i in range(num_decode)]
    work += [Work(_seq(10 + i, 6, 6, outputs=1), draft=[7] * (1 + i % 3)) for i in range(num_verify)]
    for j, n in enumerate(chunk_lens):
        seq = _seq(20 + j, 30, 4 * j)
        work.append(Work(seq, chunk=PrefillChunk(seq, 4 * j, n)))
    return work


CASES = [(d, v, c) for d, v, c in itertools.product(range(0, 9, 3), (0, 1, 2), ([], [3], [5, 7], [16]))
         if (d or v or c) and not (v and d + v > 4)]


@pytest.mark.parametrize("num_decode,num_verify,chunks", CASES)
def test_every_step_packs_into_a_warmed_shape(num_decode, num_verify, chunks):
    work = _work(num_decode, num_verify, chunks)
    inputs = pack_step(work, SHAPES)
    b = inputs.batch
    shape = SHAPES.step_shape(num_decode + num_verify, bool(num_verify), sum(chunks), len(chunks))
    assert shape in SHAPES.step_shapes()
    assert b.tokens.shape == (shape.tokens,) and b.num_short_seqs == shape.decode_slots
    cu = b.cu_q_lens
    for n, w in enumerate(work[:num_decode + num_verify]):     # short rows first, in order
        assert list(b.tokens[cu[n]:cu[n + 1]]) == w.ids
        assert b.kv_lens[n] == w.start + len(w.ids)
    if b.short_q_len == 1:   # one token per short row, padding ones included
        np.testing.assert_array_equal(cu[:shape.decode_slots + 1], np.arange(shape.decode_slots + 1))
    for j, w in enumerate(work[num_decode + num_verify:]):
        n = shape.decode_slots + j
        assert list(b.tokens[cu[n]:cu[n + 1]]) == w.ids
    assert cu[-1] - cu[shape.decode_slots] <= shape.tokens - shape.decode_slots * shape.short_q_len
    # Logits rows: plain decodes' and chunks' last tokens, then every verify token.
    last = [cu[n + 1] - 1 for n in range(num_decode)]
    last += [cu[shape.decode_slots + j + 1] - 1 for j in range(len(chunks))]
    assert list(b.logits_indices[:len(last)]) == last
    assert len(b.logits_indices) == shape.sample_rows + shape.verify_rows
    verify_tokens = [t for n in range(num_decode, num_decode + num_verify) for t in range(cu[n], cu[n + 1])]
    rows = b.logits_indices[shape.sample_rows:shape.sample_rows + len(verify_tokens)]
    assert list(rows) == verify_tokens
    assert [w.seq for w in inputs.sampled] == [w.seq for w in work if not w.draft]
    assert (inputs.verify_sampling is not None) == bool(num_verify)


def test_too_many_rows_for_a_mixed_step_are_refused():
    with pytest.raises(ValueError, match="mixed step"):
        SHAPES.step_shape(9, False, 8, 1)
    with pytest.raises(ValueError, match="without speculation"):
        Shapes(**{**SHAPES.__dict__, "verify_buckets": ()}).step_shape(2, True, 0, 0)
