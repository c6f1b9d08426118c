"""`jaxserve serve --config configs/tiny-random-disagg.yaml` serves like any other config."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.disagg._cluster import ROOT, free_port, terminate, wait_healthy


@pytest.fixture(scope="module")
def disagg_server(tmp_path_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI must ask for devices itself
    env["PYTHONPATH"] = str(ROOT)
    log_path = tmp_path_factory.mktemp("server") / "log.txt"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "jaxserve.cli", "serve", "--config",
                             str(ROOT / "configs" / "tiny-random-disagg.yaml"), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, "disaggregated server", log_path.read_text, time.monotonic() + 240)
        yield url
    finally:
        terminate(proc)
        log.close()


def test_openai_client_streaming_and_not(disagg_server):
    client = openai.OpenAI(base_url=f"{disagg_server}/v1", api_key="none")
    model = client.models.list().data[0].id
    kwargs = dict(model=model, prompt="The disaggregated engine says", max_tokens=12, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    assert whole.usage.completion_tokens == 12
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kwargs)]
    assert "".join(pieces) == whole.choices[0].text
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, temperature=0)
    assert chat.choices[0].finish_reason in ("stop", "length")
    metrics = httpx.get(f"{disagg_server}/metrics").text
    assert "jaxserve:generation_tokens_total" in metrics
    transferred = [l for l in metrics.splitlines() if l.startswith("jaxserve:kv_transfer_bytes_total ")]
    assert transferred and float(transferred[0].split()[1]) > 0


def test_state_feed_shows_both_sides_and_the_handoffs(disagg_server):
    """/debug/state of the disaggregated config: a prefill and a decode panel, each with its
    own pool, and the KV hand-offs between them counted as the engine counts them."""
    time.sleep(0.3)   # past the feed's minimum interval: a fresh snapshot, not one cached before
    before = httpx.get(f"{disagg_server}/debug/state").json()
    r = httpx.post(f"{disagg_server}/v1/completions", timeout=120, json={
        "model": "tiny-random", "prompt": "hand me off " * 8, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    time.sleep(0.3)
    state = httpx.get(f"{disagg_server}/debug/state").json()
    assert [e["role"] for e in state["engines"]] == ["prefill", "decode"]
    assert all(len(e["pool"]["cells"]) == e["pool"]["num_pages"] for e in state["engines"])
    transfer, old = state["kv_transfer"], before["kv_transfer"]
    assert transfer["transfers"] == old["transfers"] + 1 and transfer["bytes_total"] > old["bytes_total"]
    assert len(transfer["recent_s"]) >= 1
    decode = state["engines"][1]
    assert decode["finished"] and decode["finished"][-1]["output_tokens"] == 8
    assert httpx.get(f"{disagg_server}/dashboard").status_code == 200
