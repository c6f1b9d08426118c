"""Stop conditions, n > 1, logprobs and streaming through the Python API (tiny random model)."""
from __future__ import annotations

from jaxserve import SamplingParams
from jaxserve.outputs import FinishReason

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def test_max_tokens_and_length_reason(tiny):
    out = tiny.generate(["hello"], GREEDY.replace(max_tokens=7), use_tqdm=False)[0]
    assert len(out.token_ids) == 7 and out.finish_reason is FinishReason.LENGTH


def test_stop_token_id_ends_at_that_token(tiny):
    ref = tiny.generate(["hello"], GREEDY, use_tqdm=False)[0].token_ids
    stop_at = ref[5]
    first = ref.index(stop_at)
    out = tiny.generate(["hello"], GREEDY.replace(stop_token_ids=[stop_at]), use_tqdm=False)[0]
    assert out.token_ids == ref[:first + 1] and out.finish_reason is FinishReason.STOP


def test_stop_string_trims_text_and_ends_request(tiny):
    ref = tiny.generate(["hello"], GREEDY, use_tqdm=False)[0]
    text = ref.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    out = tiny.generate(["hello"], GREEDY.replace(stop=[stop]), use_tqdm=False)[0]
    assert out.finish_reason is FinishReason.STOP
    assert out.text == text[:text.index(stop)]
    assert stop not in out.text
    # The request ends at the token that completed the stop string, not later.
    assert len(out.token_ids) < len(ref.token_ids)
    assert stop in tiny.tokenizer.decode(out.token_ids)
    assert stop not in tiny.tokenizer.decode(out.token_ids[:-1])


def test_stream_pieces_add_up_to_generate(tiny):
    params = GREEDY.replace(max_tokens=16)
    whole = tiny.generate(["stream me"], params, use_tqdm=False)[0].text
    assert "".join(tiny.stream("stream me", params)) == whole
    assert not tiny.engine.has_unfinished_requests()


def test_n_samples_and_logprobs(tiny):
    # The first token has p = 0.48 on this model, so three samples agree now and then (seed 5 with
    # the blocked inverse-CDF draw); with seed 1 they differ, and would not if they shared a stream.
    out = tiny.generate(["hi"], SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=6, logprobs=2,
                                               ignore_eos=True), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    for c in out.outputs:
        assert len(c.logprobs) == 6 and all(len(lp.top) == 2 and lp.logprob <= 0 for lp in c.logprobs)


def test_steady_state_does_not_recompile(tiny):
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    tiny.generate(["warm the same shapes up"] * 3, params, use_tqdm=False)
    before = tiny.engine.stats().program_count
    tiny.generate(["warm the same shapes up"] * 3, params, use_tqdm=False)
    assert tiny.engine.stats().program_count == before
