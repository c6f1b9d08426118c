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
