"""Asynchronous scheduling (step N+1 dispatched before step N is read back) changes when the
host sees tokens, never which tokens: outputs equal one-step-at-a-time's, a sequence finished
at step N emits nothing computed at N+1, and an abort frees pages while a step is in flight.

The tiny random model in float32, where outputs do not depend on the batch around a request,
so any difference is the scheduling's. tests/engine/test_one_pass_vs_split.py runs its
recorded scenarios (chunked prefill, prefix hits with n = 2, preemption, seeded) both ways too.
"""
from __future__ import annotations

import pytest

from jaxserve import SamplingParams
from tests.engine.conftest import make_llm
from tests.engine.split_oracle import SMALL, _prompts

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def engines():
    """The same engine twice: async (the default) and sync."""
    return {mode: make_llm("tiny-random", cache__enable_prefix_caching=False,
                           scheduler__async_scheduling=mode == "async", **SMALL)
            for mode in ("async", "sync")}


def _generate(llm, prompts, params):
    return [(o.token_ids, o.text, o.finish_reason) for o in llm.generate(prompts, params, use_tqdm=False)]


def test_async_is_on_by_default_and_overlaps(engines):
    a, s = engines["async"].engine, engines["sync"].engine
    before = a.steps_overlapped
    _generate(engines["async"], _prompts(a.tokenizer, 4, 50), GREEDY)
    assert a.async_scheduling and a.steps_overlapped > before
    assert not s.async_scheduling


def test_stop_strings_and_stop_tokens_land_where_sync_puts_them(engines):
    """Sequences that finish on a stop string, a stop token or EOS mid-batch end on the same
    token with the same text: the token the in-flight step computed after it is dropped."""
    sync, asy = engines["sync"], engines["async"]
    prompts = _prompts(sync.tokenizer, 6, 80)
    free = _generate(sync, prompts, GREEDY)
    # Stops chosen from what greedy decoding produces, at different steps per prompt.
    stop_token = SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[free[0][0][5]])
    stop_text = SamplingParams(temperature=0, max_tokens=20, stop=[free[1][1][6:9]])
    for params in (stop_token, stop_text, GREEDY.replace(ignore_eos=False)):
        want = _generate(sync, prompts, params)
        assert _generate(asy, prompts, params) == want
    assert any(len(ids) < 20 for ids, _, _ in _generate(sync, prompts, stop_token))
    assert any(len(ids) < 20 for ids, _, _ in _generate(sync, prompts, stop_text))


def test_penalties_and_seeded_sampling_match_sync(engines):
    """A penalty reads the token history on the host: such a step is read back before the next
    is planned; seeded draws count the token in flight in their step index."""
    prompts = _prompts(engines["sync"].tokenizer, 5, 60)
    for params in (SamplingParams(temperature=0.9, seed=7, max_tokens=16, ignore_eos=True),
                   SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5,
                                  max_tokens=16, ignore_eos=True)):
        assert _generate(engines["async"], prompts, params) == _generate(engines["sync"], prompts, params)


def test_finished_sequence_emits_nothing_from_the_step_after(engines):
    llm = engines["async"]
    engine = llm.engine
    prompt = _prompts(llm.tokenizer, 1, 30)[0]
    want = _generate(engines["sync"], [prompt], GREEDY.replace(max_tokens=12))[0][0]
    stop_at = want[4]
    first = want.index(stop_at)
    engine.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at]))
    got, after_finish, finished = [], [], False
    for _ in range(50):
        for d in engine.step():
            (after_finish if finished else got).extend(d.token_ids)
            finished = finished or d.finish_reason is not None
        if not engine.has_unfinished_requests():
            break
    assert finished
    # The step dispatched before the stop token was read holds a row for the finished
    # sequence; reading it back emits nothing.
    assert engine._in_flight is not None
    assert engine.step() == [] and engine._in_flight is None
    assert got == want[:first + 1]
    assert after_finish == []
    assert engine.scheduler.allocator.num_used == 0


def test_abort_while_a_step_is_in_flight_frees_pages(engines):
    llm = engines["async"]
    engine = llm.engine
    prompts = _prompts(llm.tokenizer, 2, 60)
    engine.add_request("gone", prompts[0], GREEDY)
    engine.add_request("kept", prompts[1], GREEDY)
    kept: list[int] = []
    while len(kept) < 3:
        kept += [t for d in engine.step() if d.request_id == "kept" for t in d.token_ids]
    assert engine._in_flight is not None
    used = engine.scheduler.allocator.num_used
    deltas = engine.abort_request("gone")
    assert [d.finish_reason.value for d in deltas] == ["abort"]
    assert engine.scheduler.allocator.num_used < used        # freed at once, step in flight or not
    while engine.has_unfinished_requests():
        for d in engine.step():
            assert d.request_id == "kept"
            kept += d.token_ids
    engine.step()   # the last step in flight
    assert engine.scheduler.allocator.num_used == 0
    assert kept == _generate(engines["sync"], [prompts[1]], GREEDY)[0][0]
