"""The real `jaxserve` CLI in subprocesses, on the tiny-random engine.

- `jaxserve generate` prints what LLM.generate gives, `--set` reaches the config (another seed
  is another random model), and JAXSERVE_CACHE moves the executable store with the rest;
- `jaxserve serve --api-key K` and `JAXSERVE_API_KEY=K jaxserve serve` answer 401 without the key
  and real completions with it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import TINY_CONFIG, _free_socket

from jaxserve.model.source import cache_dir
from tests.disagg._cluster import wait_healthy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Once upon a time"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAXSERVE_API_KEY"}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def test_generate_with_set_and_a_moved_cache(tmp_path):
    from jaxserve import LLM, SamplingParams

    cache = tmp_path / "cache"
    cache.mkdir()
    gguf = next(cache_dir().glob("*.gguf"))
    (cache / gguf.name).symlink_to(gguf.resolve())
    cmd = [sys.executable, "-m", "jaxserve.cli", "generate", "--config", str(TINY_CONFIG), "--max-tokens", "6",
           "--set", "seed=7", "--set", "scheduler.max_num_seqs=2", "--log-level", "warning", PROMPT]
    # The references are computed here while the subprocess loads and compiles (two cores).
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(JAXSERVE_CACHE=str(cache)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        greedy = SamplingParams(max_tokens=6, temperature=0)
        want = LLM(TINY_CONFIG, seed=7, scheduler__max_num_seqs=2).generate(PROMPT, greedy, use_tqdm=False)[0].text
        other = LLM(TINY_CONFIG).generate(PROMPT, greedy, use_tqdm=False)[0].text
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert want != other                                  # so the output shows --set seed=7 was applied
    assert stdout == want + "\n"
    assert any((cache / "executables").rglob("*.exe"))     # compiled programs went to $JAXSERVE_CACHE


def _serve(tmp_path: Path, name: str, *flags: str, **env: str) -> tuple[subprocess.Popen, str, Path]:
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jaxserve.cli", "serve", "--config", str(TINY_CONFIG),
                                 "--port", str(port), "--max-num-seqs", "2", "--log-level", "warning", *flags],
                                cwd=tmp_path, env=_env(**env), stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log_path


def test_api_key_from_flag_and_from_env(tmp_path):
    servers = {"flag-key": _serve(tmp_path, "flag", "--api-key", "flag-key"),
               "env-key": _serve(tmp_path, "env", JAXSERVE_API_KEY="env-key")}
    try:
        deadline = time.monotonic() + 300
        for key, (proc, url, log) in servers.items():
            wait_healthy(url, proc, key, log.read_text, deadline)
        for key, (proc, url, log) in servers.items():
            body = {"prompt": PROMPT, "max_tokens": 3, "ignore_eos": True}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=120)
                assert r.status_code == 401, (key, headers, r.text)
                assert r.json()["error"]["code"] == "invalid_api_key"
            r = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                           timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 3 and r.json()["model"] == "tiny-random"
    finally:
        for proc, _, _ in servers.values():
            proc.kill()
            proc.wait(30)
