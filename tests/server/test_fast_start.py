"""Issue 19 through the door users use: `jaxserve serve` started twice on one cache directory.

The first start compiles its step programs and stores them (executable_store.py); the second,
a new process on the same $JAXSERVE_CACHE, loads every one of them and compiles nothing (the
server's own /metrics say so) and answers exactly as the first did. Both start with background
warm-up on (the default): /health says ready while `programs_pending` counts down to 0.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import _free_socket

from jaxserve.model.source import cache_dir
from tests.disagg._cluster import terminate, wait_healthy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# tiny-random with few buckets, so a start compiles a dozen programs, not a hundred.
CONFIG = {
    "model": {"source": "tiny-random", "dtype": "float32", "max_model_len": 128},
    "cache": {"page_size": 16, "num_pages": 40},
    "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 64, "decode_buckets": [2, 4],
                  "prefill_buckets": [16, 64]},
    "server": {"warmup": True, "warmup_in_background": True},
}


def _metrics(url: str) -> dict[str, float]:
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("jaxserve:") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _start_and_ask(tmp_path: Path, cache: Path, name: str) -> dict:
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url, log_path = f"http://127.0.0.1:{port}", tmp_path / f"{name}.log"
    env = {"PYTHONPATH": str(ROOT), "JAXSERVE_CACHE": str(cache), "PATH": "/usr/bin:/bin",
           "HOME": str(Path.home())}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jaxserve.cli", "serve", "--config",
                                 str(tmp_path / "tiny.yaml"), "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc, name, log_path.read_text, time.monotonic() + 300)
        pending = [httpx.get(f"{url}/health", timeout=30).json()["programs_pending"]]
        deadline = time.monotonic() + 300
        while pending[-1]:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
            pending.append(httpx.get(f"{url}/health", timeout=30).json()["programs_pending"])
        answers = [httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": "tiny-random", "prompt": prompt, "max_tokens": 8, "ignore_eos": True, **extra,
        }).json()["choices"][0]["text"] for prompt, extra in (
            ("Once upon a time", {"temperature": 0}),
            ("The weather today is " * 5, {"temperature": 0.8, "seed": 3}))]
        return {"pending": pending, "answers": answers, "metrics": _metrics(url), "log": log_path.read_text()}
    finally:
        terminate(proc)


def test_a_restart_loads_every_program_and_answers_the_same(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    cache = tmp_path / "cache"
    cache.mkdir()
    gguf = next(cache_dir().glob("SmolLM2*.gguf"))        # the tiny model's tokenizer
    (cache / gguf.name).symlink_to(gguf.resolve())

    fresh = _start_and_ask(tmp_path, cache, "fresh")
    warm = _start_and_ask(tmp_path, cache, "warm")

    built = fresh["metrics"]["jaxserve:program_count"]
    assert fresh["metrics"]["jaxserve:compile_count"] == built > 10, fresh["log"][-3000:]
    assert fresh["pending"][0] > 0                         # ready before everything was built
    assert warm["metrics"]["jaxserve:compile_count"] == 0, warm["log"][-3000:]
    assert warm["metrics"]["jaxserve:programs_loaded"] == built
    assert warm["answers"] == fresh["answers"]
    for start in (fresh, warm):   # every start phase is logged and exported
        for phase in ("fetch", "weights", "tokenizer", "device", "warmup", "warmup_background"):
            assert f"start phase {phase}:" in start["log"], phase
            assert f'jaxserve:start_phase_seconds{{phase="{phase}"}}' in start["metrics"], phase
