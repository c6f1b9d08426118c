"""Live servers for the HTTP tests: uvicorn in a thread on 127.0.0.1, a free port, a real socket.

`server` is parametrized over engines: "fake" (tests/server/fake_engine.py) and "real"
(jaxserve.engine.Engine on configs/tiny-random.yaml); `fake_server` and `real_server` give one.
Tests that need a special app (API key, tiny queue, a crashing engine) start their own with
`live_server(...)` on the fake engine.
"""
from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))  # fake_engine, whatever the import mode
from fake_engine import FakeEngine  # noqa: E402

from jaxserve.async_engine import AsyncEngine  # noqa: E402
from jaxserve.config import EngineConfig, load_config  # noqa: E402
from jaxserve.server import create_app  # noqa: E402
from jaxserve.server.http_server import uvicorn_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "tiny-random.yaml"

FAKE_OVERRIDES = {"model": {"max_model_len": 256},
                  "scheduler": {"max_num_seqs": 16, "decode_buckets": [16], "max_waiting": 256},
                  "cache": {"num_pages": 512, "page_size": 16}}
# The real engine: enough slots for the 64-stream test without a long queue, small max_model_len.
REAL_OVERRIDES = {"scheduler": {"max_num_seqs": 16, "max_waiting": 256}}


@dataclass
class Live:
    kind: str               # "fake" | "real"
    url: str                # http://127.0.0.1:PORT
    app: Any
    engine: AsyncEngine
    server: uvicorn.Server
    config: EngineConfig

    @property
    def model(self) -> str:
        return self.engine.model_name

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {sample name with labels: value}."""
        from prometheus_client.parser import text_string_to_metric_families
        text = httpx.get(f"{self.url}/metrics").text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def live_server(engine: Any, config: EngineConfig, kind: str = "fake", max_waiting: int | None = None,
                ready_timeout_s: float = 600, make_server=None) -> Iterator[Live]:
    """Serve `engine` with uvicorn in a thread until the block exits.

    make_server(async_engine, uvicorn_config) -> uvicorn.Server, e.g. the CLI's draining server.
    """
    sock = _free_socket()
    port = sock.getsockname()[1]
    async_engine = AsyncEngine(engine, max_waiting=max_waiting)
    app = create_app(async_engine, config)
    uv_config = uvicorn_config(app, config.server, log_level="warning", timeout_graceful_shutdown=30)
    server = (make_server or (lambda _, c: uvicorn.Server(c)))(async_engine, uv_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = Live(kind, f"http://127.0.0.1:{port}", app, async_engine, server, config)
    deadline = time.monotonic() + ready_timeout_s
    while not (server.started and async_engine.wait_ready(0.05)):
        if time.monotonic() > deadline or not thread.is_alive() or async_engine.error is not None:
            raise RuntimeError(f"server did not become ready: {async_engine.error!r}")
        time.sleep(0.05)
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def fake_config(**sections: dict) -> EngineConfig:
    overrides = {k: dict(v) for k, v in FAKE_OVERRIDES.items()}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(overrides=overrides)


def real_config() -> EngineConfig:
    return load_config(TINY_CONFIG, REAL_OVERRIDES)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[Live]:
    config = fake_config()
    with live_server(FakeEngine(config, step_s=0.005), config, "fake") as live:
        yield live


@pytest.fixture(scope="session")
def real_server() -> Iterator[Live]:
    from jaxserve.engine_factory import make_engine
    config = real_config()
    with live_server(make_engine(config), config, "real") as live:
        yield live


@pytest.fixture(scope="session", params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def server(request) -> Live:
    """Each engine's server, started once for the session however the tests are ordered."""
    return request.getfixturevalue(f"{request.param}_server")
