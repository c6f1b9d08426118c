"""Soak test: minutes of mixed traffic against one server; prints per-minute health figures.

    python tools/soak.py --config configs/smollm2-135m.yaml --minutes 30 --out /tmp/soak.json
    python tools/soak.py --url http://127.0.0.1:8000 --pid 12345 --minutes 5

With --config it starts `jaxserve serve` itself (a small scheduler.max_waiting by default, so
the bursts overflow the queue and meet 429s), stops it with SIGTERM at the end and checks that it
exits 0. Traffic, from --concurrency client threads plus a burst every minute:
  chat (non-streaming), streaming completions, streams the client drops after a few chunks,
  bad requests (NaN, lone surrogates, huge top_k, broken JSON, an over-size body, bad fields),
  long prompts near the context, and bursts of --burst short requests at once.
Each minute it prints requests served, responses by kind, p99 latency, the server's RSS and its
KV-cache use. A request is "lost" when it got no HTTP answer (a transport error or a timeout) and
was not dropped on purpose; a 5xx is counted apart. At the end it waits for the server to go
idle and reports whether running requests and used pages are back to zero.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _text_corpus import stdlib_docstrings  # noqa: E402

BAD_BODIES = [
    b'{"prompt": "hi", "max_tokens": 4, "temperature": NaN}',
    b'{"prompt": "\\ud800", "max_tokens": 4}',
    b'{"messages": [{"role": "user", "content": "a\\udfffb"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "top_k": 2147483648}',
    b'{"prompt": "hi", "max_tokens": 4, "repetition_penalty": "nan"}',
    b'{"prompt": "hi", "seed": 100000000000000000000000000000000000000000, "max_tokens": 2}',
    b'{"prompt": "hi" ',
    b'{"prompt": "hi", "n": -3}',
    b'{"prompt": "bad \xff bytes"}',
    b'{"messages": []}',
]


@dataclass
class Minute:
    served: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)


class Tally:
    """Thread-safe per-minute counters."""

    def __init__(self, start_s: float):
        self.start_s = start_s
        self.lock = threading.Lock()
        self.minutes: dict[int, Minute] = collections.defaultdict(Minute)

    def record(self, kind: str, latency_s: float | None = None, served: bool = False) -> None:
        with self.lock:
            m = self.minutes[int((time.monotonic() - self.start_s) // 60)]
            m.by_kind[kind] += 1
            if served:
                m.served += 1
            if latency_s is not None:
                m.latencies_s.append(latency_s)


def _p99(xs: list[float]) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def _metric(url: str, name: str) -> float | None:
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(f"jaxserve:{name} ") or line.startswith(f"jaxserve:{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Traffic:
    def __init__(self, url: str, model: str, tally: Tally, seed: int, long_prompt: str, timeout_s: float,
                 max_request_bytes: int):
        self.url, self.model, self.tally = url, model, tally
        self.rng = random.Random(seed)
        self.long_prompt = long_prompt
        self.timeout_s = timeout_s
        self.max_request_bytes = max_request_bytes
        self.client = httpx.Client(base_url=url, timeout=timeout_s)

    def _answer(self, r: httpx.Response, t0: float, stream_ok: bool = True) -> None:
        latency = time.monotonic() - t0
        if r.status_code == 200 and stream_ok:
            self.tally.record("200", latency, served=True)
        elif r.status_code == 200:
            self.tally.record("stream_error", latency)
        elif r.status_code == 429:
            self.tally.record("429", latency)
        elif r.status_code >= 500:
            self.tally.record(f"5xx:{r.status_code}", latency)
        else:
            self.tally.record("4xx", latency)

    def one(self, kind: str) -> None:
        t0 = time.monotonic()
        try:
            getattr(self, f"_{kind}")(t0)
        except (httpx.TransportError, httpx.TimeoutException) as e:
            self.tally.record(f"lost:{type(e).__name__}")

    def _chat(self, t0: float) -> None:
        body = {"model": self.model, "max_tokens": self.rng.choice([8, 32, 64]),
                "messages": [{"role": "user", "content": self.rng.choice(
                    ["What is the capital of France?", "Write a haiku about rain.", "Count to ten."])}]}
        self._answer(self.client.post("/v1/chat/completions", json=body), t0)

    def _stream(self, t0: float, drop_after: int | None = None) -> None:
        body = {"model": self.model, "prompt": "Once upon a time", "max_tokens": 64, "stream": True,
                "temperature": 0.8, "seed": self.rng.randrange(2**40)}
        with self.client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return self._answer(r, t0)
            events = 0
            done = False
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events += 1
                    if line == "data: [DONE]":
                        done = True
                    elif '"error"' in line[:20]:
                        return self.tally.record("stream_error", time.monotonic() - t0)
                if drop_after is not None and events >= drop_after:
                    return self.tally.record("dropped", time.monotonic() - t0)
            self._answer(r, t0, stream_ok=done)

    def _drop(self, t0: float) -> None:
        self._stream(t0, drop_after=self.rng.randint(1, 5))

    def _bad(self, t0: float) -> None:
        if self.rng.random() < 0.1:
            body = b'{"prompt": "' + b"x" * (self.max_request_bytes + 1) + b'"}'
        else:
            body = self.rng.choice(BAD_BODIES)
        path = self.rng.choice(["/v1/completions", "/v1/chat/completions"])
        r = self.client.post(path, content=body, headers={"content-type": "application/json"})
        ok = 400 <= r.status_code < 500 or r.status_code == 200   # huge top_k and wide seeds are valid
        self.tally.record("bad_refused" if ok and r.status_code != 200 else
                          ("200" if ok else f"5xx:{r.status_code}"), time.monotonic() - t0,
                          served=r.status_code == 200)

    def _long(self, t0: float) -> None:
        body = {"model": self.model, "prompt": self.long_prompt, "max_tokens": 16}
        self._answer(self.client.post("/v1/completions", json=body), t0)


def _worker(traffic: Traffic, stop: threading.Event) -> None:
    kinds = ["chat"] * 4 + ["stream"] * 3 + ["drop"] * 2 + ["bad"] * 2 + ["long"]
    while not stop.is_set():
        traffic.one(traffic.rng.choice(kinds))


def _bursts(url: str, model: str, tally: Tally, size: int, stop: threading.Event, timeout_s: float,
            max_request_bytes: int) -> None:
    n = 0
    while not stop.wait(60):
        threads = [threading.Thread(target=Traffic(url, model, tally, 10_000 + n * size + i, "", timeout_s,
                                                   max_request_bytes).one, args=("chat",))
                   for i in range(size)]
        n += 1
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "jaxserve.cli", "serve", "--config", args.config, "--port", str(port),
           "--set", f"scheduler.max_waiting={args.max_waiting}", *sum((["--set", s] for s in args.set), [])]
    log = open(args.server_log, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start (see {args.server_log})")
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="start `jaxserve serve --config CONFIG` and soak it")
    ap.add_argument("--url", help="soak a running server instead")
    ap.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the started server")
    ap.add_argument("--max-waiting", type=int, default=16, help="scheduler.max_waiting of the started server")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--burst", type=int, default=40, help="requests sent at once each minute")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a request counts as lost")
    ap.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--server-log", default="/tmp/jaxserve-soak-server.log")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    if bool(args.config) == bool(args.url):
        ap.error("give exactly one of --config and --url")

    proc, url, pid = None, args.url, args.pid
    if args.config:
        proc, url = _start_server(args)
        pid = proc.pid
    model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    long_prompt = " ".join(stdlib_docstrings().split()[:1200])   # ~1,500 tokens of 2,048
    start = time.monotonic()
    tally = Tally(start)
    stop = threading.Event()
    threads = [threading.Thread(target=_worker, args=(Traffic(url, model, tally, i, long_prompt, args.timeout,
                                                              args.max_request_bytes), stop), daemon=True)
               for i in range(args.concurrency)]
    threads.append(threading.Thread(target=_bursts, args=(url, model, tally, args.burst, stop, args.timeout,
                                                          args.max_request_bytes), daemon=True))
    for t in threads:
        t.start()
    rows = []
    print(f"soaking {url} ({model}) for {args.minutes} min, {args.concurrency} clients + bursts of {args.burst}")
    print(f"{'min':>4} {'served':>7} {'p99 s':>7} {'RSS MiB':>8} {'KV used':>8}  responses")
    for minute in range(int(args.minutes)):
        time.sleep(max(0.0, start + 60 * (minute + 1) - time.monotonic()))
        with tally.lock:
            m = tally.minutes[minute]
            row = {"minute": minute + 1, "served": m.served, "by_kind": dict(m.by_kind),
                   "p99_latency_s": _p99(m.latencies_s), "rss_mib": _rss_mib(pid),
                   "kv_cache_usage": _metric(url, "kv_cache_usage_perc")}
        rows.append(row)
        p99 = f"{row['p99_latency_s']:.2f}" if row["p99_latency_s"] is not None else "-"
        rss = f"{row['rss_mib']:.0f}" if row["rss_mib"] is not None else "-"
        kv = f"{row['kv_cache_usage']:.3f}" if row["kv_cache_usage"] is not None else "-"
        print(f"{row['minute']:>4} {row['served']:>7} {p99:>7} {rss:>8} {kv:>8}  {row['by_kind']}", flush=True)
    stop.set()
    for t in threads:
        t.join(args.timeout + 60)
    with tally.lock:   # requests still finishing when the last minute was printed
        totals = collections.Counter()
        for m in tally.minutes.values():
            totals.update(m.by_kind)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running, usage = _metric(url, "num_requests_running"), _metric(url, "kv_cache_usage_perc")
        if running == 0 and usage == 0:
            break
        time.sleep(1)
    final = {"num_requests_running": _metric(url, "num_requests_running"),
             "kv_cache_usage_perc": _metric(url, "kv_cache_usage_perc"), "rss_mib": _rss_mib(pid)}
    exit_code = None
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(120)
    summary = {"url": url, "model": model, "minutes": args.minutes, "concurrency": args.concurrency,
               "burst": args.burst, "totals": dict(totals),
               "num_5xx": sum(v for k, v in totals.items() if k.startswith("5xx")),
               "num_lost": sum(v for k, v in totals.items() if k.startswith("lost")),
               "num_stream_errors": totals.get("stream_error", 0), "final": final,
               "server_exit_code": exit_code, "per_minute": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "per_minute"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    ok = (summary["num_5xx"] == 0 and summary["num_lost"] == 0 and summary["num_stream_errors"] == 0
          and final["num_requests_running"] == 0 and final["kv_cache_usage_perc"] == 0
          and exit_code in (None, 0, -signal.SIGTERM))   # uvicorn re-raises the SIGTERM it drained on
    print("SOAK", "PASSED" if ok else "FAILED")
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
