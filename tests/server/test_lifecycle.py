"""Server states on the fake engine: API key, full queue (429), a dead engine (503), SIGTERM drain;
and the CLI's `serve` as a subprocess on the real tiny engine (start, answer, SIGTERM, exit)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import TINY_CONFIG, _free_socket, fake_config, live_server
from fake_engine import CRASH, FakeEngine

from jaxserve.server.http_server import ServingServer

ROOT = Path(__file__).resolve().parents[2]


def _wait_metric(live, name: str, value: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while live.metrics()[name] != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def _open_stream(url: str, body: dict):
    """Start a streaming request and read its first chunk; returns (client, response, line iterator)."""
    client = httpx.Client(timeout=60)
    response = client.send(client.build_request("POST", url, json=body | {"stream": True}), stream=True)
    lines = response.iter_lines()
    while not next(lines).startswith("data: "):
        pass
    return client, response, lines


def test_api_key():
    config = fake_config(server={"api_key": "sekret"})
    with live_server(FakeEngine(config), config) as live:
        body = {"prompt": "hi", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            r = httpx.post(f"{live.url}/v1/completions", json=body, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{live.url}/v1/models").status_code == 401
        assert httpx.get(f"{live.url}/health").status_code == 200
        assert httpx.get(f"{live.url}/metrics").status_code == 200
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sekret", max_retries=0)
        assert client.completions.create(model=live.model, prompt="hi", max_tokens=2).usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{live.url}/v1", api_key="nope", max_retries=0).models.list()


def test_full_queue_answers_429_with_retry_after():
    config = fake_config(scheduler={"max_num_seqs": 1, "decode_buckets": [1], "max_waiting": 1})
    with live_server(FakeEngine(config, step_s=0.01), config) as live:
        body = {"prompt": "hi", "max_tokens": 150, "ignore_eos": True}
        url = f"{live.url}/v1/completions"
        running = _open_stream(url, body)                       # takes the only slot
        waiting = threading.Thread(target=lambda: httpx.post(url, json=body, timeout=60), daemon=True)
        waiting.start()
        _wait_metric(live, "jaxserve:num_requests_waiting", 1)
        r = httpx.post(url, json=body)
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        running[1].close()
        running[0].close()
        waiting.join(30)
        _wait_metric(live, "jaxserve:num_requests_running", 0)
        assert httpx.post(url, json=body | {"max_tokens": 2}).status_code == 200


def test_dead_engine_fails_every_request_and_health():
    config = fake_config()
    with live_server(FakeEngine(config, step_s=0.01), config) as live:
        url = f"{live.url}/v1/completions"
        client, response, lines = _open_stream(url, {"prompt": "hi", "max_tokens": 200, "ignore_eos": True})
        r = httpx.post(url, json={"prompt": f"please {CRASH}", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable_error"
        rest = list(lines)                                      # the open stream ends, with an error event
        events = [line[len("data: "):] for line in rest if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "error" in json.loads(events[-2])
        client.close()
        assert httpx.get(f"{live.url}/health").status_code == 503
        r = httpx.post(url, json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and "engine failed" in r.json()["error"]["message"]


def test_sigterm_drains_in_flight_requests():
    config = fake_config()
    with live_server(FakeEngine(config, step_s=0.01), config, make_server=ServingServer) as live:
        url = f"{live.url}/v1/completions"
        client, response, lines = _open_stream(url, {"prompt": "hi", "max_tokens": 60, "ignore_eos": True,
                                                     "stream_options": {"include_usage": True}})
        live.server.handle_exit(signal.SIGTERM, None)
        assert not live.engine.ready
        events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 60
        client.close()
        deadline = time.monotonic() + 10
        while live.engine.healthy:
            assert time.monotonic() < deadline, "engine thread did not stop"
            time.sleep(0.05)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{live.url}/health")


@pytest.mark.slow
def test_cli_serve_subprocess_answers_then_drains_on_sigterm(tmp_path):
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jaxserve.cli", "serve", "--config", str(TINY_CONFIG),
                             "--port", str(port), "--max-num-seqs", "4", "--log-level", "info"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.25)
        client, response, lines = _open_stream(f"{url}/v1/completions",
                                               {"prompt": "hi", "max_tokens": 40, "ignore_eos": True})
        proc.send_signal(signal.SIGTERM)
        events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        client.close()
        # uvicorn re-raises the captured SIGTERM once drained, so the exit status says "by SIGTERM".
        assert proc.wait(60) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert f"http://127.0.0.1:{port}/v1" in log and "start-up" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
