"""/metrics parses, moves with traffic, and shows a disconnected client's request being freed.

The disconnect tests hold the engine thread at the start of a step (`_engine_held`) so that the
request can neither finish nor be freed before the client has left, however fast the engine is,
and they leave by closing a plain socket from the thread that opened it: a real FIN, which the
server sees at once. (httpx.Client.close() from another thread does not do that: the thread
blocked in recv() keeps the connection open until the response arrives.)
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Callable, Iterator

import httpx
import pytest

RUNNING = "jaxserve:num_requests_running"
KV = "jaxserve:kv_cache_usage_perc"
ABORTS = 'jaxserve:request_success_total{finished_reason="abort"}'
LENGTHS = 'jaxserve:request_success_total{finished_reason="length"}'
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _wait_idle(server, timeout_s: float = 20) -> dict[str, float]:
    """Wait until no request is open, in the HTTP layer or the engine; returns the metrics then."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = server.metrics()
        # num_in_flight also counts a request whose add the engine thread has not taken yet,
        # which the engine's stats snapshot does not show.
        if (m[RUNNING] == 0 and m["jaxserve:num_requests_waiting"] == 0 and m[KV] == 0
                and server.engine.num_in_flight == 0):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"not idle: running={m[RUNNING]} kv={m[KV]} "
                                 f"in_flight={server.engine.num_in_flight}")
        time.sleep(0.05)


def _wait_until(what: str, ready: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _wait_aborts(server, expected: float) -> None:
    """The abort is counted when the server notices the disconnect, just after the client left."""
    _wait_until(f"abort count == {expected}", lambda: server.metrics().get(ABORTS, 0) == expected)


@contextlib.contextmanager
def _engine_held(server, after_first_token: bool) -> Iterator[threading.Event]:
    """Hold the engine thread at the start of a step until the block exits; yields `held`, set then.

    after_first_token: hold at the first step after one that gave tokens (the request is running
    and holds pages; its first delta has reached the server); else at the first step (the request
    is in the engine, with no token yet). Leaving the block lets the engine run on.
    """
    engine = server.engine.engine
    step = engine.step
    armed, held, resume = threading.Event(), threading.Event(), threading.Event()
    if not after_first_token:
        armed.set()

    def held_step():
        if armed.is_set():
            held.set()
            resume.wait()
        deltas = step()
        if deltas:
            armed.set()
        return deltas

    engine.step = held_step
    try:
        yield held
    finally:
        resume.set()
        engine.step = step


def _post_raw(server, path: str, body: dict) -> socket.socket:
    """Send a POST by hand on a plain socket and return it unread; its close() is a disconnect."""
    url = httpx.URL(server.url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((url.host, url.port), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _long_body(server, stream: bool, extra: dict | None = None) -> dict:
    max_tokens = server.config.model.max_model_len // 2
    body = {"model": server.model, "prompt": "Tell me a long story.", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream} | (extra or {})
    if "messages" in body:
        del body["prompt"]
    return body


def test_metrics_parse_and_counters_move(server):
    names = set(server.metrics())
    for expected in ["jaxserve:time_to_first_token_seconds_count", "jaxserve:inter_token_latency_seconds_count",
                     "jaxserve:e2e_request_latency_seconds_count", RUNNING, "jaxserve:num_requests_waiting",
                     KV, "jaxserve:prefix_cache_hit_rate", "jaxserve:prompt_tokens_total",
                     "jaxserve:generation_tokens_total", "jaxserve:num_preemptions_total",
                     "jaxserve:prefix_cache_queries_total", "jaxserve:prefix_cache_hits_total",
                     "jaxserve:startup_time_seconds", "jaxserve:warmup_time_seconds", "jaxserve:compile_count",
                     "jaxserve:compile_time_seconds", "jaxserve:spec_proposed_tokens_total",
                     "jaxserve:spec_accepted_tokens_total"]:
        assert expected in names, expected
    before = _wait_idle(server)
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   json={"model": server.model, "prompt": "Count: one two three", "max_tokens": 5,
                         "ignore_eos": True}).json()
    after = server.metrics()

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert moved("jaxserve:prompt_tokens_total") == r["usage"]["prompt_tokens"]
    assert moved("jaxserve:generation_tokens_total") == 5
    assert moved('jaxserve:request_success_total{finished_reason="length"}') == 1
    assert moved("jaxserve:time_to_first_token_seconds_count") == 1
    assert moved("jaxserve:e2e_request_latency_seconds_count") == 1
    assert moved("jaxserve:inter_token_latency_seconds_count") == 4
    assert after["jaxserve:startup_time_seconds"] > 0


def test_stream_disconnect_frees_pages(server):
    before = _wait_idle(server)
    with _engine_held(server, after_first_token=True) as held:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=_long_body(server, True),
                          timeout=60) as r:
            assert r.status_code == 200
            assert held.wait(60), "the request never produced a token"
            assert any(line.startswith("data: ") for line in r.iter_lines())  # the first chunk
            busy = server.metrics()
            assert busy[RUNNING] == 1 and busy[KV] > 0
        # Leaving the block closes the connection mid-stream; the engine is still held.
        _wait_aborts(server, before.get(ABORTS, 0) + 1)
    after = _wait_idle(server)
    assert after[ABORTS] - before.get(ABORTS, 0) == 1
    assert after.get(LENGTHS, 0) == before.get(LENGTHS, 0)


@pytest.mark.parametrize("path,extra", [("/v1/completions", {}), ("/v1/chat/completions", CHAT)])
def test_non_stream_disconnect_frees_pages(server, path, extra):
    before = _wait_idle(server)
    with _engine_held(server, after_first_token=True) as held:
        sock = _post_raw(server, path, _long_body(server, False, extra))
        assert held.wait(60), "the request never produced a token"
        busy = server.metrics()
        assert busy[RUNNING] == 1 and busy[KV] > 0
        sock.close()
        _wait_aborts(server, before.get(ABORTS, 0) + 1)
    after = _wait_idle(server)
    assert after[ABORTS] - before.get(ABORTS, 0) == 1
    assert after.get(LENGTHS, 0) == before.get(LENGTHS, 0)


@pytest.mark.parametrize("path,extra", [("/v1/completions", {}), ("/v1/chat/completions", CHAT)])
def test_disconnect_before_first_token_counts_abort(server, path, extra):
    before = _wait_idle(server)
    with _engine_held(server, after_first_token=False) as held:
        sock = _post_raw(server, path, _long_body(server, False, extra))
        assert held.wait(60), "the request never reached the engine"
        sock.close()
        _wait_aborts(server, before.get(ABORTS, 0) + 1)
    after = _wait_idle(server)
    assert after[ABORTS] - before.get(ABORTS, 0) == 1
    assert after.get(LENGTHS, 0) == before.get(LENGTHS, 0)


def test_disconnect_before_engine_takes_request_keeps_engine_alive(server):
    """A client leaving while its add still waits for the busy engine thread: nothing breaks."""
    before = _wait_idle(server)
    with _engine_held(server, after_first_token=True) as held:
        first = _post_raw(server, "/v1/completions", _long_body(server, False))
        assert held.wait(60), "the first request never produced a token"
        second = _post_raw(server, "/v1/completions", _long_body(server, False))
        # The engine thread is held inside a step, so the second add waits in its inbox.
        _wait_until("the second request is added", lambda: server.engine.num_in_flight == 2)
        second.close()
        _wait_aborts(server, before.get(ABORTS, 0) + 1)
        first.close()
        _wait_aborts(server, before.get(ABORTS, 0) + 2)
    after = _wait_idle(server)
    assert after[ABORTS] - before.get(ABORTS, 0) == 2
    assert server.engine.healthy, f"engine failed: {server.engine.error!r}"
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   json={"model": server.model, "prompt": "hi", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
