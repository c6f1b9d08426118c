"""The sampler's stage list: its order is the documented one, and a stage a batch does not need is not traced."""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from jaxserve import SamplingParams
from jaxserve.outputs import RequestMetrics
from jaxserve.sampler import PackTimes, build_sampling, pipeline, sample
from jaxserve.sampler.stage import Stage
from jaxserve.sequence import Sequence
from jaxserve.step_inputs import Shapes

SHAPES = Shapes(page_size=16, max_pages_per_seq=8, decode_buckets=(1, 2, 4, 8), prefill_buckets=(16,),
                max_prefill_seqs=4, history_len=64)
V = 64


def _seq(params: SamplingParams, grammar=None) -> Sequence:
    return Sequence(seq_id=0, request_id="r", index=0, prompt_ids=[1, 2, 3], params=params, seed=3,
                    metrics=RequestMetrics(arrival_s=0.0), grammar=grammar)


class _AllowEvenTokens:
    """A stand-in GrammarState: allows the even token ids only."""

    mask_words = (V + 31) // 32

    def fill_mask(self, row: np.ndarray) -> None:
        row[:] = np.int32(0x55555555)


def test_stage_order_is_the_documented_one():
    documented = re.search(r"^Order: (.+)$", pipeline.__doc__, re.M).group(1).split(" -> ")
    names = [s.name for s in pipeline.STAGES]
    assert names == documented
    # issue 13: the grammar mask before penalties, temperature and the filters; the draw last.
    assert names == ["grammar_mask", "penalties", "temperature", "filters", "draw"]


def _traced_stages(monkeypatch, seqs) -> list[str]:
    """Names of the stages whose device code a trace of sample() runs, in order."""
    calls: list[str] = []

    def wrap(stage: Stage) -> Stage:
        def apply(logits, packed):
            calls.append(stage.name)
            return stage.apply(logits, packed)
        return stage._replace(apply=apply)

    monkeypatch.setattr(pipeline, "STAGES", tuple(wrap(s) for s in pipeline.STAGES))
    arrays = build_sampling(seqs, 4, SHAPES)
    # A fresh function each time: make_jaxpr shares jit's trace cache, which would skip the trace.
    jax.make_jaxpr(lambda logits, a: sample(logits, a))(np.zeros((4, V), np.float32), arrays)
    return calls


@pytest.mark.parametrize("params, grammar, expected", [
    (SamplingParams(temperature=0), None, ["draw"]),
    (SamplingParams(temperature=0, top_k=5, top_p=0.5), None, ["draw"]),   # greedy: filters moot
    (SamplingParams(temperature=0.7, seed=1), None, ["temperature", "draw"]),
    (SamplingParams(temperature=0.7, top_p=0.9, seed=1), None, ["temperature", "filters", "draw"]),
    (SamplingParams(temperature=0, presence_penalty=0.5), None, ["penalties", "draw"]),
    (SamplingParams(temperature=0.7, min_p=0.1, repetition_penalty=1.2, seed=1), _AllowEvenTokens(),
     ["grammar_mask", "penalties", "temperature", "filters", "draw"]),
])
def test_only_the_stages_a_batch_needs_are_traced(monkeypatch, params, grammar, expected):
    seqs = [_seq(params, grammar), _seq(SamplingParams(temperature=0))]
    assert _traced_stages(monkeypatch, seqs) == expected


def test_a_greedy_batch_program_holds_no_search_sort_or_scatter():
    arrays = build_sampling([_seq(SamplingParams(temperature=0))], 4, SHAPES)
    text = str(jax.make_jaxpr(sample)(np.zeros((4, V), np.float32), arrays))
    for primitive in ("while", "sort", "scatter", "random_bits"):
        assert primitive not in text


def test_the_grammar_mask_stage_masks_and_reports_its_host_time():
    times = PackTimes()
    logits = np.random.default_rng(0).normal(size=(2, V)).astype(np.float32)
    logits[:, 1] = 100.0   # odd: forbidden by the grammar
    seqs = [_seq(SamplingParams(temperature=0), _AllowEvenTokens()), _seq(SamplingParams(temperature=0))]
    tokens = np.asarray(sample(logits, build_sampling(seqs, 2, SHAPES, times=times)).tokens)
    assert tokens[0] == 2 * np.argmax(logits[0, ::2]) and tokens[1] == 1
    assert times.batches == {"grammar_mask": 1} and times.seconds["grammar_mask"] > 0
    build_sampling(seqs[1:], 2, SHAPES, times=times)   # no constrained row: no mask, no time
    assert times.batches["grammar_mask"] == 1


def test_jit_retraces_per_stage_set_only():
    traces = []

    @jax.jit
    def step(logits, arrays):
        traces.append(arrays.active())
        return sample(logits, arrays)

    logits = np.zeros((4, V), np.float32)
    greedy = [_seq(SamplingParams(temperature=0))]
    sampled = [_seq(SamplingParams(temperature=1.0, top_k=3, seed=5))]
    for seqs in (greedy, sampled, greedy, sampled, [_seq(SamplingParams(temperature=0.5, top_k=9))]):
        step(logits, build_sampling(seqs, 4, SHAPES))
    assert traces == [[], ["temperature", "filters", "draw"]]   # greedy: every stage off, argmax
