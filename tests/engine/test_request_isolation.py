"""A request that breaks the host work of a step fails alone; the others finish exactly as alone.

Faults are injected where a request's own values are handled (packing its sampling row,
detokenizing its token), on the real tiny engine; hypothesis then throws arbitrary
SamplingParams at it: each is refused at construction or generates tokens in the vocabulary.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxserve.step_inputs as step_inputs_module
from jaxserve import SamplingParams
from jaxserve.outputs import FinishReason

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def _run(engine, requests: dict[str, list[int]], params=GREEDY) -> dict[str, list]:
    """Add the requests, step until all finish; return request id -> its deltas."""
    for rid, ids in requests.items():
        engine.add_request(rid, ids, params)
    out: dict[str, list] = {rid: [] for rid in requests}
    while engine.has_unfinished_requests():
        for d in engine.step():
            out[d.request_id].append(d)
    return out


def _tokens(deltas) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


@pytest.fixture
def prompts(tiny):
    enc = tiny.tokenizer.encode
    return {"a": enc("The cat sat on"), "bad": enc("Once upon a time"), "c": enc("1 2 3 4")}


def test_a_request_whose_row_cannot_be_packed_fails_alone(tiny, prompts, monkeypatch):
    alone = {rid: _tokens(d) for rid, d in _run(tiny.engine, {k: v for k, v in prompts.items()
                                                            if k != "bad"}).items()}
    real_build = step_inputs_module.build_sampling   # pack_step packs the sampling rows

    def build(seqs, *args, **kwargs):
        if any(s.request_id == "bad" and s.output_ids for s in seqs):   # its first decode step
            raise OverflowError("Python integer out of bounds for int32")
        return real_build(seqs, *args, **kwargs)

    monkeypatch.setattr(step_inputs_module, "build_sampling", build)
    out = _run(tiny.engine, prompts)
    assert out["bad"][-1].finish_reason is FinishReason.ERROR
    assert "OverflowError" in out["bad"][-1].error
    assert {rid: _tokens(out[rid]) for rid in alone} == alone
    assert tiny.engine.stats().kv_pages_used == 0


def test_a_request_whose_detokenization_raises_fails_alone(tiny, prompts, monkeypatch):
    alone = {rid: _tokens(d) for rid, d in _run(tiny.engine, {k: v for k, v in prompts.items()
                                                            if k != "bad"}).items()}
    engine = tiny.engine
    real_append = engine.outputs.append

    def append(seq, token, logprobs):
        if seq.request_id == "bad" and len(seq.output_ids) == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real_append(seq, token, logprobs)

    monkeypatch.setattr(engine.outputs, "append", append)
    out = _run(engine, prompts)
    assert out["bad"][-1].finish_reason is FinishReason.ERROR
    assert len(_tokens(out["bad"])) == 2
    assert {rid: _tokens(out[rid]) for rid in alone} == alone
    assert engine.stats().kv_pages_used == 0


_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10),
                     st.sampled_from([0.0, 1e-9, 1e-3, 1.0, 2.0, 1e4, 1e30, 3.5e38]))
_sampling = st.fixed_dictionaries({}, optional={
    "temperature": _numbers, "top_p": _numbers, "min_p": _numbers, "repetition_penalty": _numbers,
    "presence_penalty": _numbers, "frequency_penalty": _numbers,
    "top_k": st.integers(-2, 2**70), "seed": st.integers(-2**80, 2**80),
    "n": st.integers(-1, 4), "max_tokens": st.integers(-1, 3),
    "stop": st.lists(st.text(max_size=4), max_size=3), "stop_token_ids": st.lists(st.integers(-1, 2**40), max_size=3),
    "logprobs": st.one_of(st.none(), st.integers(-1, 25)),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=_sampling)
def test_any_sampling_params_are_refused_or_served(tiny, fields):
    try:
        params = SamplingParams(**fields)
    except ValueError as e:
        assert str(e).split()[0] in fields, e   # the message names a field that was given
        return
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        assert math.isfinite(getattr(params, name))
    out = _run(tiny.engine, {"h": tiny.tokenizer.encode("Hello")}, params)["h"]
    assert out and all(d.finish_reason is not FinishReason.ERROR for d in out)
    vocab = tiny.engine.arch.vocab_size
    assert all(0 <= t < vocab for t in _tokens(out))
    assert tiny.engine.stats().kv_pages_used == 0
