"""/metrics parses, moves with traffic, and shows a disconnected client's request being freed."""
from __future__ import annotations

import time

import httpx
import pytest

RUNNING = "jaxserve:num_requests_running"
KV = "jaxserve:kv_cache_usage_perc"
ABORTS = 'jaxserve:request_success_total{finished_reason="abort"}'


def _wait_idle(server, timeout_s: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        m = server.metrics()
        if m[RUNNING] == 0 and m["jaxserve:num_requests_waiting"] == 0 and m[KV] == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"not idle: running={m[RUNNING]} kv={m[KV]}")
        time.sleep(0.05)


def _long_body(server, stream: bool) -> dict:
    max_tokens = server.config.model.max_model_len // 2
    return {"model": server.model, "prompt": "Tell me a long story.", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}


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
    with httpx.stream("POST", f"{server.url}/v1/completions", json=_long_body(server, True), timeout=60) as r:
        assert r.status_code == 200
        # Keep the iterator referenced: an abandoned httpx iterator closes the connection.
        lines, num_chunks = r.iter_lines(), 0
        while num_chunks < 3:
            num_chunks += next(lines).startswith("data: ")
        busy = server.metrics()
        assert busy[RUNNING] == 1 and busy[KV] > 0
    # Leaving the block closes the connection mid-stream.
    after = _wait_idle(server)
    assert after[ABORTS] - before.get(ABORTS, 0) == 1


@pytest.mark.parametrize("path,extra", [("/v1/completions", {}),
                                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})])
def test_non_stream_disconnect_frees_pages(server, path, extra):
    before = _wait_idle(server)
    body = _long_body(server, False) | extra
    if "messages" in body:
        del body["prompt"]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}{path}", json=body, timeout=httpx.Timeout(60, read=0.3))
    after = _wait_idle(server)
    assert after[ABORTS] - before.get(ABORTS, 0) == 1
