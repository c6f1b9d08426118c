"""Bad input raises a ValueError naming the field; the engine goes on serving."""
from __future__ import annotations

import pytest

from jaxserve import SamplingParams, load_config


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n"),
    (dict(top_k=-3), "top_k"),
    (dict(min_p=2.0), "min_p"),
    (dict(logprobs=99), "logprobs"),
])
def test_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler:\n  max_num_seqz: 4\n")
    with pytest.raises(ValueError, match="scheduler.max_num_seqz"):
        load_config(bad)
    with pytest.raises(ValueError, match="cache.page_size"):
        load_config(overrides={"cache": {"page_size": 12}})


def test_bad_prompts_rejected_engine_keeps_serving(tiny):
    ok = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine = tiny.engine
    engine.add_request("good-1", tiny.tokenizer.encode("hello there"), ok)
    with pytest.raises(ValueError, match="prompt must not be empty"):
        engine.add_request("bad-empty", [], ok)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request("bad-long", [5] * (engine.max_model_len + 10), ok)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request("bad-ids", [10**9], ok)
    mutated = SamplingParams(max_tokens=4)
    mutated.temperature = -1.0                      # bypasses __post_init__; add_request re-checks
    with pytest.raises(ValueError, match="temperature"):
        engine.add_request("bad-temp", [5], mutated)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("good-1", [5], ok)
    while engine.has_unfinished_requests():
        engine.step()
    out = tiny.generate(["still serving?"], ok, use_tqdm=False)[0]
    assert len(out.token_ids) == 4
