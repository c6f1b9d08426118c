"""Every client error answers its status with OpenAI's error body; the server survives a burst of them."""
from __future__ import annotations

import concurrent.futures

import httpx
import pytest

LONG = "word " * 3000
CHAT = [{"role": "user", "content": "hi"}]

# (path, json body or raw bytes, status, param, code)
CASES = [
    ("/v1/completions", b"{not json", 400, None, "invalid_json"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt", None),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "x", "temperature": -1, "stream": True}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n", None),
    ("/v1/completions", {"prompt": "x", "n": 1000}, 400, "n", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs", None),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop", None),
    ("/v1/completions", {"prompt": "x", "top_k": -5}, 400, "top_k", None),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo", None),
    ("/v1/completions", {"prompt": LONG}, 400, "prompt", None),
    ("/v1/completions", {"prompt": LONG, "stream": True}, 400, "prompt", None),
    ("/v1/completions", {"prompt": [1, 2, 10**9]}, 400, "prompt", None),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", None),
    ("/v1/completions", {"prompt": "x", "model": "no-such-model"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", None),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs", None),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 30}, 400, "top_logprobs", None),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": -1}, 400, "max_completion_tokens", None),
    ("/v1/chat/completions", {"messages": CHAT, "presence_penalty": 5}, 400, "presence_penalty", None),
    ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens", None),
    ("/tokenize", {}, 400, "prompt", None),
    ("/v1/no-such-route", {}, 404, None, None),
]


def _post(url: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(url, json=body, timeout=60)


def _check(r: httpx.Response, status: int, param: str | None, code: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code


@pytest.mark.parametrize("path,body,status,param,code", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_error_case(server, path, body, status, param, code):
    _check(_post(server.url + path, body), status, param, code)


def test_wrong_method(server):
    r = httpx.get(f"{server.url}/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_burst_of_bad_requests_then_good_ones(server):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        bad = list(pool.map(lambda c: _post(server.url + c[0], c[1]).status_code, CASES * 4))
    assert all(s >= 400 for s in bad)
    assert httpx.get(f"{server.url}/health").status_code == 200
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   json={"model": server.model, "prompt": "hello", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
