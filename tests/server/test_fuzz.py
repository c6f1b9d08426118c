"""Fuzzing the live server (real tiny engine): no 5xx, no hang, and nothing left behind.

schemathesis drives every operation of the server's own OpenAPI schema with valid and invalid
bodies; hypothesis adds chat conversations of arbitrary text (lone surrogates included) and
arbitrary sampling fields. Afterwards a normal request must still succeed and /metrics must show
no running request and no KV page in use. Examples are bounded so this fits the default suite.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest
import schemathesis
from conftest import REAL_OVERRIDES, TINY_CONFIG, live_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve.config import load_config
from jaxserve.engine_factory import make_engine

pytestmark = pytest.mark.slow
REQUEST_TIMEOUT_S = 60   # a hang fails the example instead of stalling the suite


@pytest.fixture(scope="module")
def fuzzed():
    # A short context bounds the longest generation a fuzzed max_tokens can ask for.
    config = load_config(TINY_CONFIG, REAL_OVERRIDES | {"model": {"max_model_len": 128}})
    with live_server(make_engine(config), config, "real") as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_schema_fuzz_never_answers_5xx(case, fuzzed):
    response = case.call(base_url=fuzzed.url, timeout=REQUEST_TIMEOUT_S)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


_text = st.one_of(st.text(max_size=40), st.sampled_from(["\ud800", "a\udfffb", "\x00", "<|im_start|>", "é" * 30]))
_message = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"]),
    "content": st.one_of(_text, st.none(), st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                            "text": _text}), max_size=2)),
})
_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                    st.integers(-2**70, 2**70))
_extras = st.fixed_dictionaries({}, optional={
    "temperature": _number, "top_p": _number, "top_k": _number, "min_p": _number, "seed": _number,
    "repetition_penalty": _number, "presence_penalty": _number, "frequency_penalty": _number,
    "n": st.integers(-1, 3), "stop": st.one_of(_text, st.lists(_text, max_size=3)),
    "max_tokens": st.integers(-1, 4), "logprobs": st.booleans(), "stream": st.booleans(),
})


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(_message, min_size=0, max_size=4), extras=_extras)
def test_chat_fuzz_answers_200_or_4xx(fuzzed, messages, extras):
    body = json.dumps({"messages": messages, "max_tokens": 3} | extras).encode()  # ASCII escapes: surrogates travel
    r = httpx.post(f"{fuzzed.url}/v1/chat/completions", content=body, timeout=REQUEST_TIMEOUT_S,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (body[:300], r.text[:300])
    if r.status_code != 200:
        assert r.json()["error"]["message"]


def test_after_fuzzing_the_server_serves_and_holds_nothing(fuzzed):
    r = httpx.post(f"{fuzzed.url}/v1/completions", json={"prompt": "hello", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    deadline = time.monotonic() + 10
    while True:
        m = fuzzed.metrics()
        if m["jaxserve:num_requests_running"] == 0 and m["jaxserve:kv_cache_usage_perc"] == 0:
            break
        assert time.monotonic() < deadline, {k: v for k, v in m.items() if "running" in k or "kv_cache" in k}
        time.sleep(0.1)
    assert fuzzed.engine.healthy
