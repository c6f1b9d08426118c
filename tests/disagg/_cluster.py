"""Real `jaxserve serve --role ...` processes on 127.0.0.1 for the multi-process tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny-random.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    role: str
    url: str
    popen: subprocess.Popen
    log_path: Path

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, like a crashed host."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def load(self) -> dict:
        return httpx.get(f"{self.url}/load", timeout=2).json()


def spawn(tmp: Path, role: str, *extra: str) -> Proc:
    """Start one `jaxserve serve --role ROLE` process on a free port; does not wait for it."""
    port = free_port()
    log_path = tmp / f"{role}-{port}.log"
    cmd = [sys.executable, "-m", "jaxserve.cli", "serve", "--config", str(CONFIG), "--role", role,
           "--port", str(port), "--log-level", "warning", "--kv-ticket-timeout", "20", *extra]
    with open(log_path, "w") as log:
        popen = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log,
                                 stderr=subprocess.STDOUT, text=True)
    return Proc(role, f"http://127.0.0.1:{port}", popen, log_path)


def spawn_router(tmp: Path, prefill: list[Proc], decode: list[Proc]) -> Proc:
    urls = [a for p in prefill for a in ("--prefill-url", p.url)] + \
           [a for d in decode for a in ("--decode-url", d.url)]
    return spawn(tmp, "router", *urls)


def tails(procs: list[Proc]) -> str:
    return "\n".join(f"== {p.role} {p.url}\n{p.log_path.read_text()[-3000:]}" for p in procs)


def wait_healthy(url: str, popen: subprocess.Popen, name: str, logs, deadline: float) -> None:
    """Until `url`/health answers 200; raises with logs() if the process exits or time runs out."""
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited early\n{logs()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} never became ready\n{logs()}")
        time.sleep(0.25)


def wait_ready(procs: list[Proc], timeout_s: float = 240) -> None:
    """Until every process answers /health with 200 (a router: once it sees both roles)."""
    deadline = time.monotonic() + timeout_s
    for p in procs:
        wait_healthy(p.url, p.popen, p.role, lambda: tails(procs), deadline)


def stop(procs: list[Proc]) -> None:
    for p in procs:
        if p.popen.poll() is None:
            p.popen.terminate()
    for p in procs:
        try:
            p.popen.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def terminate(popen: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM (a server drains and exits), SIGKILL if it has not exited within grace_s."""
    popen.terminate()
    try:
        popen.wait(grace_s)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


def metric(text: str, name: str) -> float:
    """The value of one unlabelled (or exactly labelled) sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)
