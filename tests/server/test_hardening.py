"""Issue 17's findings, each through HTTP: no request can take the engine down or stall the server.

The engine-side findings run on the real tiny engine (its sampler packs int32/uint32 arrays); the
connection-level ones on the fake engine with short timeouts, which are engine-agnostic.
"""
from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import httpx
import pytest
from conftest import fake_config, live_server
from fake_engine import CRASH, FakeEngine

from jaxserve.server.http_server import ServingServer

real = pytest.mark.parametrize("server", ["real"], indirect=True)
CHAT = [{"role": "user", "content": "hi"}]


def _post_raw(url: str, body: bytes, **kw) -> httpx.Response:
    return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60, **kw)


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param, err
    return err


def _still_serves(url: str) -> None:
    assert httpx.get(f"{url}/health").status_code == 200
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text


# 1. top_k past int32 used to kill the engine thread (OverflowError while packing the row).
@real
@pytest.mark.parametrize("top_k", [2**31, 10**30])
def test_huge_top_k_is_the_whole_vocabulary(server, top_k):
    body = {"messages": CHAT, "max_tokens": 4, "temperature": 1.0, "seed": 7}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body | {"top_k": top_k}, timeout=60)
    assert r.status_code == 200, r.text
    unfiltered = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    assert r.json()["choices"][0]["message"] == unfiltered["choices"][0]["message"]
    _still_serves(server.url)


# 2. A huge body is refused before it is parsed or tokenized; /health stays fast meanwhile.
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
def test_health_answers_within_200ms_while_a_10m_character_request_is_refused(server):
    body = json.dumps({"prompt": "x" * 10_000_000, "max_tokens": 1}).encode()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(_post_raw, f"{server.url}/v1/completions", body)
        latencies = []
        while not big.done():
            t0 = time.perf_counter()
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.01)
        err = _error(big.result(), 413)
    assert err["code"] == "request_too_large" and "server.max_request_bytes" in err["message"]
    assert latencies and max(latencies) < 0.2, latencies


@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
def test_chunked_body_past_the_limit_is_413(server):
    limit = server.config.server.max_request_bytes

    def chunks():
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=60)
    _error(r, 413)


@real
def test_over_long_text_is_refused_from_its_length(server):
    # Under the byte limit, but more characters than max_model_len tokens could ever cover.
    text = "y" * 3_000_000
    t0 = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": text}, timeout=60)
    assert "characters" in _error(r, 400, "prompt")["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "z" * 30_000}] * 100}, timeout=60)
    assert "characters" in _error(r, 400, "messages")["message"]
    assert time.perf_counter() - t0 < 5
    r = httpx.post(f"{server.url}/tokenize", json={"prompt": text}, timeout=60)
    _error(r, 400, "prompt")


@real
def test_tokenize_output_is_bounded_by_the_context(server):
    n = server.engine.max_model_len
    r = httpx.post(f"{server.url}/tokenize", json={"prompt": " hello" * (n + 10)}, timeout=60)
    assert "max_model_len" in _error(r, 400, "prompt")["message"]
    r = httpx.post(f"{server.url}/tokenize", json={"prompt": " hello" * 10}, timeout=60)
    assert r.status_code == 200 and r.json()["count"] <= 11
    r = httpx.post(f"{server.url}/detokenize", json={"tokens": [1] * (n + 1)}, timeout=60)
    _error(r, 400, "tokens")


# 3. Lone surrogates and invalid UTF-8 used to answer 500 (TypeError in the tokenizer).
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', "prompt"),
    ("/v1/completions", b'{"prompt": ["ok \\udfff"], "max_tokens": 2}', "prompt[0]"),
    ("/v1/completions", b'{"prompt": "hi", "stop": ["\\ud800"], "max_tokens": 2}', "stop[0]"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
     "messages[0].content[0].text"),
    ("/tokenize", b'{"prompt": "\\ud800"}', "prompt"),
    ("/tokenize", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    ("/v1/completions", b'{"prompt": "bad \xff\xfe bytes", "max_tokens": 2}', "prompt"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xc3("}]}', "messages[0].content"),
])
def test_invalid_text_is_a_400_naming_the_field(server, path, body, param):
    err = _error(_post_raw(f"{server.url}{path}", body), 400, param)
    assert "UTF-8" in err["message"]


# 4. Error messages quote a short piece of the input, not all of it.
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
@pytest.mark.parametrize("body", [
    {"prompt": "hi", "temperature": "h" * 2_000_000},
    {"prompt": "hi", "stop": ["s" * 3_000_000]},
    {"prompt": "hi", "model": "m" * 2_000_000},
    {"prompt": "hi", "stop": ["x"] * 100_000},
])
def test_error_messages_do_not_echo_the_input(server, body):
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code in (400, 404), r.text[:300]
    assert len(r.content) < 2000, len(r.content)


# 5. NaN and infinities are refused by name (NaN used to decode greedily without a word).
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
@pytest.mark.parametrize("field,raw", [
    ("temperature", "NaN"), ("temperature", "Infinity"), ("temperature", "-Infinity"),
    ("temperature", '"nan"'), ("repetition_penalty", '"nan"'), ("repetition_penalty", "Infinity"),
    ("top_p", "NaN"), ("min_p", "NaN"), ("presence_penalty", "NaN"), ("frequency_penalty", '"inf"'),
    ("temperature", "1e39"),
])
def test_non_finite_numbers_are_refused(server, field, raw):
    body = f'{{"prompt": "hi", "max_tokens": 2, "{field}": {raw}}}'.encode()
    _error(_post_raw(f"{server.url}/v1/completions", body), 400, field)


# 7. Seeds of any size: hashed to the engine's width, not cut (2**64 and 10**100 used to agree).
@real
def test_wide_seeds_keep_distinct_streams(server):
    def sample(seed):
        body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 5.0, "seed": seed,
                "ignore_eos": True}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    wide = [2**64, 10**100, -1, 2**32]
    texts = [sample(s) for s in wide]
    assert len(set(texts)) == len(wide), texts
    assert sample(10**100) == texts[1]


# 8. A trailing slash is not redirected to whatever Host the client claims.
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
def test_trailing_slash_is_not_redirected_to_the_host_header(server):
    r = httpx.post(f"{server.url}/v1/completions/", json={"prompt": "hi", "max_tokens": 2},
                   headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers
    _error(r, 404)


# 4b. X-Request-Id is accepted and echoed, as vLLM does.
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
def test_x_request_id_is_echoed(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2},
                   headers={"X-Request-Id": "trace-42"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    assert r.json()["id"] == "chatcmpl-trace-42"
    # The same id twice at once is fine: engine ids stay unique.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rs = list(pool.map(lambda _: httpx.post(f"{server.url}/v1/completions", timeout=60,
                                                json={"prompt": "hi", "max_tokens": 3},
                                                headers={"X-Request-Id": "same"}), range(2)))
    assert [r.status_code for r in rs] == [200, 200]
    _error(httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi"},
                      headers={"X-Request-Id": "x" * 300}), 400, "X-Request-Id")


# 6. Idle and slow-header connections are closed (uvicorn alone keeps the latter forever).
def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_idle_and_slow_header_connections_time_out():
    config = fake_config(server={"timeout_request_header_s": 1.0, "timeout_keep_alive_s": 1.0})
    with live_server(FakeEngine(config), config) as live:
        port = int(live.url.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        reused = socket.create_connection(("127.0.0.1", port))
        reused.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reused.recv(65536)
        reused.sendall(b"GET /health HTTP/1.1\r\nHo")   # a second request that never completes
        t0 = time.monotonic()
        assert _closed_within(silent, 5) and _closed_within(partial, 5) and _closed_within(reused, 5)
        assert time.monotonic() - t0 < 5
        for s in (silent, partial, reused):
            s.close()
        # A long stream is not cut by the header timer.
        r = httpx.post(f"{live.url}/v1/completions", timeout=30,
                       json={"prompt": "hi", "max_tokens": 150, "ignore_eos": True, "stream": True})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


# The engine thread dying: every request fails, then the server stops by itself (exit 1 in the CLI).
def test_server_stops_when_the_engine_dies():
    config = fake_config()
    with live_server(FakeEngine(config, step_s=0.01), config, make_server=ServingServer) as live:
        r = httpx.post(f"{live.url}/v1/completions", json={"prompt": f"x {CRASH}", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503
        deadline = time.monotonic() + 10
        while not live.server.engine_failed:
            assert time.monotonic() < deadline, "server kept running with a dead engine"
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{live.url}/health", timeout=1)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "server still answers with a dead engine"
            time.sleep(0.1)


# Found by the fuzzer: an empty conversation reached the chat template and answered 500.
@pytest.mark.parametrize("server", ["fake", "real"], indirect=True)
def test_empty_conversation_to_tokenize_is_a_400(server):
    _error(httpx.post(f"{server.url}/tokenize", json={"messages": []}), 400, "messages")
