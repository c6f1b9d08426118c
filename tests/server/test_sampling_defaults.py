"""Sampling fields a request leaves unset: the model's recommendation, else llama.cpp's defaults."""
from __future__ import annotations

import httpx
import pytest
from conftest import fake_config, live_server
from fake_engine import FakeEngine, greedy_text

from jaxserve.config import load_config
from jaxserve.sampling_defaults import LLAMA_CPP_DEFAULTS, model_defaults, resolve_defaults
from jaxserve.server import protocol as p


def test_unset_fields_take_llama_cpp_defaults_and_set_fields_win(fake_server):
    serving = fake_server.app.state.serving
    req = p.CompletionRequest(prompt="hi")
    params = serving._params(req, max_tokens=4, logprobs=None, rename={})
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0.8, 40, 0.95, 0.05)
    req = p.CompletionRequest(prompt="hi", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    params = serving._params(req, max_tokens=4, logprobs=None, rename={})
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (1.0, 0, 1.0, 0.0)


def test_config_sampling_defaults_apply_through_http():
    config = fake_config(sampling_defaults={"temperature": 0.0})
    with live_server(FakeEngine(config), config) as live:
        r = httpx.post(f"{live.url}/v1/completions", json={"prompt": "ab", "max_tokens": 7, "seed": 3})
        ids = live.engine.tokenizer.encode("ab")
        assert r.json()["choices"][0]["text"] == greedy_text(ids, 7)   # greedy: the configured default
        r = httpx.post(f"{live.url}/v1/completions",
                       json={"prompt": "ab", "max_tokens": 7, "seed": 3, "temperature": 1.0})
        assert r.json()["choices"][0]["text"] != greedy_text(ids, 7)


def test_model_recommendations_replace_llama_cpp_defaults():
    generation = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "eos_token_id": 2, "top_k": "x"}
    model = model_defaults(generation)
    assert model == {"temperature": 0.6, "top_p": 0.9}
    assert resolve_defaults(model, {"top_p": None, "min_p": 0.1}) == {"temperature": 0.6, "top_p": 0.9, "min_p": 0.1}
    assert resolve_defaults({}, {}) == LLAMA_CPP_DEFAULTS


def test_bad_sampling_defaults_are_named():
    with pytest.raises(ValueError, match="sampling_defaults.temperature"):
        load_config(overrides={"sampling_defaults": {"temperature": -1.0}})


def test_hf_tokenizer_reads_generation_config(tmp_path):
    import json

    from jaxserve.model.source import KNOWN_MODELS, resolve_model_source
    from jaxserve.tokenizer import Tokenizer

    Tokenizer.from_gguf(resolve_model_source(next(iter(KNOWN_MODELS)))).backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "top_k": 20, "eos_token_id": 2}))
    assert Tokenizer.from_hf_dir(tmp_path).sampling_defaults == {"temperature": 0.7, "top_k": 20}
