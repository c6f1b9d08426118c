"""Start-up time of `jaxserve serve`, fresh and warm, beside llama.cpp's server on the same GGUF.

    python tools/bench_startup.py                                  # every configs/*.yaml
    python tools/bench_startup.py --configs configs/smollm2-135m.yaml --only both \
        --llama-server /path/to/llama-server --json /tmp/bench_startup.json --out /tmp/startup
    python tools/bench_startup.py --configs configs/tiny-random.yaml --only fresh   # quick check
    python tools/bench_startup.py --configs configs/smollm2-135m.yaml --peer-only \
        --llama-server /path/to/llama-server                     # llama.cpp's side alone

For each config the server is started as a user would start it, `jaxserve serve --config C
--port P` (run as `python -m jaxserve.cli` from this checkout, so the working tree is what is
timed), and the clock starts when the process is launched. Figures, all from that launch
(time.monotonic(), in the parent):
  ready s        /health first answers 200
  compiled s     the 200 body's `programs_pending` first reads 0 (background compilation done);
                 a server whose body has no such key: the same as ready
  1st token s    the first streamed token of one /v1/completions request (stream, max_tokens 8,
                 temperature 0, a short fixed prompt, `model` from GET /v1/models) sent as soon
                 as /health said 200; "after ready" is the same moment less ready s
  request s      that request's total time, from its sending to its last chunk
/health is polled every 50 ms, concurrently with the request until compiled s is seen. /metrics
is read once at compiled s and once more after the request (values of
jaxserve:start_phase_seconds, jaxserve:compile_count, jaxserve:compile_time_seconds and
jaxserve:programs_loaded, where present), and the server's log (stdout and stderr, in --out) is
searched for lines `... start phase <name>: <seconds> s`. Absent metrics or lines are left out.
Each server is then stopped with SIGTERM (SIGKILL after 30 s) before the next starts: never two
at once (jaxserve's exit status is then -15: uvicorn re-raises the SIGTERM it drained on). A
start past --timeout is recorded as timed out, killed, and the run goes on; the exit status is 1
when any start failed or timed out.

Fresh and warm:
  fresh  JAXSERVE_CACHE is a new empty temporary directory (under --cache-root) holding only
         symlinks to the *.gguf and *.whl files of the user's cache (~/.cache/jaxserve, or
         $JAXSERVE_CACHE), so nothing is downloaded; converted params (params/), the XLA
         compilation cache (xla/) and anything else the server writes start empty.
  warm   a second start with the same JAXSERVE_CACHE, reusing whatever the fresh start wrote.
         With `--only warm` there is no fresh start: the user's own cache is used as it is
         (whatever earlier runs left there), and the JSON says so.
The size of each cache directory (files, bytes) is recorded before every start.

Peer: with --llama-server (default $LLAMA_SERVER), each config whose model.source names a GGUF
found on disk (a known model name from jaxserve.model.source.KNOWN_MODELS, looked up in the
user's cache, or a .gguf path) is also served by `llama-server -m GGUF --port P -np 32 -c 32768
-t 2`, timed the same way (its /health is 200 once loaded, it has no programs_pending, and
/metrics is not read). llama.cpp keeps no compile cache, so its two starts ("1st", "2nd") differ
only by the OS page cache, and its 1st start follows the jaxserve starts that read the same
file, so it is not a cold-disk start either. `tiny-random` configs have no peer. Disaggregated
configs (a `disagg:` section) are served in-process by the same single `jaxserve serve --config`
command and timed like the others.

Writes --json (every raw figure, the machine, the git commit and the files of jaxserve/ and
configs/ that differ from it, the date). Only the standard library, httpx and jaxserve's own
config loader are used.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # jaxserve from this checkout, whatever is installed
sys.path.insert(0, str(Path(__file__).resolve().parent))   # tools/ holds scripts, not a package
from _machine import cpu_model  # noqa: E402

PROMPT = "The capital of France is"
MAX_TOKENS = 8
POLL_S = 0.05
STOP_GRACE_S = 30.0
METRIC_PREFIXES = ("jaxserve:start_phase_seconds", "jaxserve:compile_count",
                   "jaxserve:compile_time_seconds", "jaxserve:programs_loaded")
PHASE_RE = re.compile(r"start phase (?P<name>[^:\n]+?): (?P<s>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?) s\b")
PEER_NOTE = "llama.cpp has no compile cache: its 2nd start differs from its 1st only by the OS page cache"
PEER_AFTER_JAXSERVE = "; its 1st follows the jaxserve starts, which read the same GGUF"


class StartFailed(Exception):
    """The server exited, answered an error, or sent something unreadable."""


class TimedOut(Exception):
    """The start went past --timeout."""


# ------------------------------------------------------------------------------- the machine
def machine() -> dict:
    cpu = cpu_model()
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_avg_1m_at_start": os.getloadavg()[0], "python": platform.python_version(),
            "platform": platform.platform()}


def code_state() -> dict:
    """The commit measured, and engine and config files that differ from it (others may be mid-change)."""
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout
    try:
        dirty = git("status", "--porcelain", "--", "jaxserve", "pallas_kernels", "configs").splitlines()
        return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted": [l[3:] for l in dirty]}
    except OSError:
        return {"commit": None, "uncommitted": None}


def llama_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("version:")]
    return lines[0].split(":", 1)[1].strip() if lines else None


# ----------------------------------------------------------------------------------- caches
def user_cache() -> Path:
    from jaxserve.model.source import cache_dir   # ~/.cache/jaxserve, or $JAXSERVE_CACHE
    return cache_dir()


def fresh_cache(real: Path, root: Path | None, stem: str) -> tuple[Path, list[str]]:
    """A new empty cache directory with symlinks to the real cache's GGUF files and wheels."""
    path = Path(tempfile.mkdtemp(prefix=f"bench_startup-{stem}-", dir=root))
    linked = []
    for pattern in ("*.gguf", "*.whl"):
        for src in sorted(real.glob(pattern)):
            (path / src.name).symlink_to(src.resolve())
            linked.append(src.name)
    return path, linked


def cache_contents(path: Path) -> dict:
    """Files and bytes under each top-level entry of a cache dir, symlinks counted apart, not followed."""
    out: dict[str, dict] = {}
    if not path.is_dir():
        return out
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            out.setdefault("(symlinks)", {"files": 0, "bytes": 0})["files"] += 1
        elif entry.is_dir():
            files = size = 0
            for dirpath, _, names in os.walk(entry):
                for name in names:
                    try:
                        size += os.lstat(os.path.join(dirpath, name)).st_size
                        files += 1
                    except OSError:
                        pass
            out[entry.name + "/"] = {"files": files, "bytes": size}
        else:
            out.setdefault("(files)", {"files": 0, "bytes": 0})
            out["(files)"]["files"] += 1
            out["(files)"]["bytes"] += entry.stat().st_size
    return out


def peer_gguf(source: str, real: Path) -> Path | None:
    """The GGUF file a model.source names, if it is on disk: a known model in the user's cache,
    a .gguf path, or a bare .gguf file name found in the user's cache."""
    from jaxserve.model.source import KNOWN_MODELS
    if source in KNOWN_MODELS:
        path = real / KNOWN_MODELS[source].filename
        return path if path.is_file() else None
    if not source.endswith(".gguf"):
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    path = real / path.name
    return path if path.is_file() else None


# ------------------------------------------------------------------------------- one start
_port = [0]


def next_port() -> int:
    """The next port from --port on that nothing on 127.0.0.1 holds."""
    while True:
        port = _port[0]
        _port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def _last_log_line(log: Path) -> str:
    try:
        lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def parse_phases(text: str) -> dict[str, float]:
    """`start phase <name>: <seconds> s` lines; a name seen again is kept as name#2, name#3, ..."""
    phases: dict[str, float] = {}
    for m in PHASE_RE.finditer(text):
        name, n = m["name"].strip(), 1
        key = name
        while key in phases:
            n += 1
            key = f"{name}#{n}"
        phases[key] = float(m["s"])
    return phases


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith(METRIC_PREFIXES):
            name, _, value = line.rpartition(" ")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                pass
    return values


def _json(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        return None


def wait_healthy(client: httpx.Client, url: str, proc: subprocess.Popen, log: Path, deadline: float):
    """Polls /health until 200: (the moment, the body as JSON or None)."""
    while True:
        if proc.poll() is not None:
            raise StartFailed(f"exited with status {proc.returncode} before /health said 200: "
                              f"{_last_log_line(log)}")
        try:
            r = client.get(f"{url}/health")
            now = time.monotonic()
            if r.status_code == 200:
                return now, _json(r)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimedOut("/health")
        time.sleep(POLL_S)


class CompiledWatch(threading.Thread):
    """After /health's first 200: polls it until programs_pending reads 0 (at once if the body has no
    such key), then reads /metrics. Runs beside the first request."""

    def __init__(self, url: str, body, ready_t: float, deadline: float, read_metrics: bool):
        super().__init__(daemon=True)
        self.url, self.deadline, self.read_metrics = url, deadline, read_metrics
        self.pending_seen = isinstance(body, dict) and "programs_pending" in body
        self.pending_first = body.get("programs_pending") if self.pending_seen else None
        self.compiled_t = None if self.pending_seen and self.pending_first != 0 else ready_t
        self.polls = 0
        self.error: str | None = None
        self.timed_out = False
        self.metrics: dict | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while self.compiled_t is None and not self._cancelled.is_set():
                if time.monotonic() > self.deadline:
                    self.timed_out = True
                    return
                try:
                    r = client.get(f"{self.url}/health")
                    now = time.monotonic()
                    self.polls += 1
                    body = _json(r)
                    if r.status_code == 200 and isinstance(body, dict) and body.get("programs_pending") == 0:
                        self.compiled_t = now
                        break
                    if r.status_code != 200:
                        self.error = f"/health answered {r.status_code} while compiling: {r.text[:200]}"
                        return
                except httpx.TransportError as e:
                    self.error = f"/health: {e!r}"
                    return
                self._cancelled.wait(POLL_S)
            if self.compiled_t is not None and self.read_metrics:
                self.metrics = read_metrics(client, self.url)


def read_metrics(client: httpx.Client, url: str) -> dict | None:
    try:
        r = client.get(f"{url}/metrics")
    except httpx.TransportError:
        return None
    return parse_metrics(r.text) if r.status_code == 200 else None


def first_request(client: httpx.Client, url: str, deadline: float) -> dict:
    """GET /v1/models, then one streamed /v1/completions: when it was sent, its first token, its end."""
    r = client.get(f"{url}/v1/models")
    models = _json(r)
    if r.status_code != 200 or not isinstance(models, dict) or not models.get("data"):
        raise StartFailed(f"/v1/models answered {r.status_code}: {r.text[:200]}")
    model = models["data"][0]["id"]
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    out = {"model": model, "sent_t": time.monotonic(), "first_chunk_t": None, "first_token_t": None,
           "chunks": 0, "text": ""}
    timeout = httpx.Timeout(max(1.0, deadline - time.monotonic()), connect=10)
    with client.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout) as resp:
        if resp.status_code != 200:
            raise StartFailed(f"/v1/completions answered {resp.status_code}: {resp.read()[:200]!r}")
        for line in resp.iter_lines():
            if time.monotonic() > deadline:
                raise TimedOut("first request")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError as e:
                raise StartFailed(f"unreadable stream chunk {data[:200]!r}") from e
            if "error" in chunk:
                raise StartFailed(f"stream error: {str(chunk['error'])[:200]}")
            now = time.monotonic()
            choices = chunk.get("choices") or []
            text = "".join(c.get("text") or "" for c in choices)
            if choices:
                out["chunks"] += 1
                out["first_chunk_t"] = out["first_chunk_t"] or now
            if text and out["first_token_t"] is None:
                out["first_token_t"] = now
            out["text"] += text
    out["done_t"] = time.monotonic()
    if out["first_token_t"] is None:        # nothing but empty chunks: the first chunk stands in
        out["first_token_t"] = out["first_chunk_t"]
    return out


def stop_server(proc: subprocess.Popen) -> dict:
    """SIGTERM, wait; SIGKILL (the process group it leads) after STOP_GRACE_S."""
    t0, killed = time.monotonic(), False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            killed = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return {"exit_code": proc.returncode, "stop_s": round(time.monotonic() - t0, 3), "sigkilled": killed}


def measure_start(cmd: list[str], env: dict, log: Path, url: str, timeout_s: float,
                  jaxserve: bool) -> dict:
    """Launch `cmd`, time ready / compiled / first token, stop it. Every figure in s from launch."""
    rec: dict = {"cmd": cmd, "log": str(log), "ready_s": None, "compiled_s": None, "first_token_s": None,
                 "first_token_after_ready_s": None, "request_s": None, "timed_out": False, "error": None}
    watch = None
    with open(log, "wb") as log_file:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = t0 + timeout_s
    since = lambda t: None if t is None else round(t - t0, 3)
    try:
        with httpx.Client(timeout=5) as client:
            ready_t, body = wait_healthy(client, url, proc, log, deadline)
            rec["ready_s"], rec["health_body"] = since(ready_t), body
            watch = CompiledWatch(url, body, ready_t, deadline, read_metrics=jaxserve)
            watch.start()
            req = first_request(client, url, deadline)
            rec.update(model=req["model"], request_sent_s=since(req["sent_t"]),
                       first_chunk_s=since(req["first_chunk_t"]), first_token_s=since(req["first_token_t"]),
                       request_s=round(req["done_t"] - req["sent_t"], 3), chunks=req["chunks"],
                       text=req["text"])
            if req["first_token_t"] is not None:
                rec["first_token_after_ready_s"] = round(req["first_token_t"] - ready_t, 3)
            watch.join(max(0.0, deadline - time.monotonic()))
            if watch.is_alive() or watch.timed_out:
                raise TimedOut("programs_pending")
            if watch.error:
                raise StartFailed(watch.error)
            if jaxserve:
                rec["metrics_end"] = read_metrics(client, url)
    except TimedOut as e:
        rec["timed_out"], rec["error"] = True, f"timed out after {timeout_s:.0f} s waiting for {e}"
    except httpx.TimeoutException as e:
        rec["timed_out"] = time.monotonic() >= deadline - 1.0   # the read timeout is the time left
        rec["error"] = f"{type(e).__name__}: {e}"
        if rec["timed_out"]:
            rec["error"] += f" (past the {timeout_s:.0f} s timeout)"
    except (StartFailed, httpx.HTTPError) as e:
        rec["error"] = str(e) if isinstance(e, StartFailed) else f"{type(e).__name__}: {e}"
    finally:
        rec.update(stop_server(proc))   # first, so nothing below can leave a server running
        if watch is not None:
            watch.cancel()
            watch.join(5)
            rec.update(compiled_s=since(watch.compiled_t), programs_pending_seen=watch.pending_seen,
                       programs_pending_first=watch.pending_first, health_polls_while_compiling=watch.polls,
                       metrics=watch.metrics)
        rec["phases"] = parse_phases(log.read_text(errors="replace")) if log.exists() else {}
    return rec


# ------------------------------------------------------------------------------ per config
def config_info(path: str) -> dict:
    from jaxserve.config import load_config
    cfg = load_config(path)
    return {"source": cfg.model.source, "disagg_mode": cfg.disagg.mode, "warmup": cfg.server.warmup}


def jaxserve_cmd(config: str, port: int) -> list[str]:
    return [sys.executable, "-m", "jaxserve.cli", "serve", "--config", config, "--port", str(port)]


def llama_cmd(binary: str, gguf: Path, port: int) -> list[str]:
    return [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "32", "-c", "32768",
            "-t", "2"]


def jaxserve_env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAXSERVE_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["JAXSERVE_CACHE"] = str(cache)
    return env


def run_config(config: str, args, real: Path, result: dict, save) -> None:
    stem = Path(config).stem
    entry: dict = {"config": config, "jaxserve": {}, "peer": None}
    result["configs"].append(entry)
    try:
        entry.update(config_info(config))
    except Exception as e:   # a config the loader rejects is reported, not fatal
        entry["error"] = f"config: {type(e).__name__}: {e}"
        return
    if not args.peer_only:
        if args.only == "warm":
            cache, entry["cache"] = real, {"dir": str(real), "prepared": "the user's cache, as it was"}
        else:
            cache, linked = fresh_cache(real, args.cache_root, stem)
            entry["cache"] = {"dir": str(cache), "prepared": "new, empty, with symlinks", "linked": linked}
        try:
            for kind in ("fresh", "warm") if args.only == "both" else (args.only,):
                port = next_port()
                contents = cache_contents(cache)
                print(f"  jaxserve {kind} start on port {port} ...", flush=True)
                rec = measure_start(jaxserve_cmd(config, port), jaxserve_env(cache),
                                    args.out / f"{stem}-jaxserve-{kind}.log", f"http://127.0.0.1:{port}",
                                    args.timeout, jaxserve=True)
                rec["cache_before"] = contents
                entry["jaxserve"][kind] = rec
                _progress(rec)
                save()
        finally:
            if cache != real:
                entry["cache"]["after"] = cache_contents(cache)
                if args.keep_cache:
                    entry["cache"]["kept"] = True
                else:
                    shutil.rmtree(cache, ignore_errors=True)
    if not args.llama_server:
        entry["peer"] = {"skipped": "no --llama-server (nor $LLAMA_SERVER)"}
        return
    if entry["source"] == "tiny-random":
        entry["peer"] = {"skipped": "tiny-random: random weights, no GGUF, so no llama.cpp peer"}
        return
    gguf = peer_gguf(entry["source"], real)
    if gguf is None:
        entry["peer"] = {"skipped": f"model.source {entry['source']!r} names no GGUF found on disk"}
        return
    entry["peer"] = {"engine": "llama.cpp llama-server", "binary": args.llama_server, "gguf": str(gguf),
                     "note": PEER_NOTE + ("" if args.peer_only else PEER_AFTER_JAXSERVE), "starts": {}}
    for i, label in enumerate(("1st", "2nd")[:2 if args.only == "both" else 1]):
        port = next_port()
        print(f"  llama-server {label} start on port {port} ...", flush=True)
        entry["peer"]["starts"][label] = measure_start(
            llama_cmd(args.llama_server, gguf, port), dict(os.environ), args.out / f"{stem}-llamacpp-{i + 1}.log",
            f"http://127.0.0.1:{port}", args.timeout, jaxserve=False)
        _progress(entry["peer"]["starts"][label])
        save()


# ---------------------------------------------------------------------------------- report
def _progress(rec: dict) -> None:
    what = ("TIMED OUT" if rec["timed_out"] else "ERROR") + f" {rec['error']}" if rec["error"] else ""
    print(f"    ready {_s(rec['ready_s'])} s, compiled {_s(rec['compiled_s'])} s, first token "
          f"{_s(rec['first_token_s'])} s, exit {rec['exit_code']} {what}".rstrip(), flush=True)


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_config(entry: dict) -> None:
    print(f"\n== {entry['config']}  ({entry.get('source')}, {entry.get('disagg_mode')}, "
          f"warmup {'on' if entry.get('warmup') else 'off'})")
    if "error" in entry:
        print(f"   ERROR {entry['error']}")
        return
    rows = [(f"jaxserve {k}", r) for k, r in entry["jaxserve"].items()]
    peer = entry.get("peer") or {}
    rows += [(f"llama-server {k}", r) for k, r in peer.get("starts", {}).items()]
    print(f"   {'start':22s} {'ready s':>8s} {'compiled s':>10s} {'1st token s':>11s} {'after ready':>11s} "
          f"{'request s':>9s} {'exit':>5s}  at compiled->after request")
    for name, r in rows:
        at, end = r.get("metrics") or {}, r.get("metrics_end") or {}
        g = lambda v: "-" if v is None else f"{v:g}"
        compiles = " ".join(f"{k.split(':', 1)[1]} {g(at.get(k))}->{g(end.get(k))}" for k in {**at, **end}
                            if k.startswith(("jaxserve:compile_count", "jaxserve:programs_loaded")))
        print(f"   {name:22s} {_s(r['ready_s']):>8s} {_s(r['compiled_s']):>10s} {_s(r['first_token_s']):>11s} "
              f"{_s(r['first_token_after_ready_s']):>11s} {_s(r['request_s']):>9s} {str(r['exit_code']):>5s}  "
              f"{compiles}")
        if r.get("phases"):
            print("      phases: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
        if r.get("error"):
            print(f"      {'TIMED OUT' if r['timed_out'] else 'ERROR'}: {r['error']}  (log {r['log']})")
    fresh, warm = entry["jaxserve"].get("fresh"), entry["jaxserve"].get("warm")
    if fresh and warm and fresh["ready_s"] and warm["ready_s"]:
        line = f"   warm/fresh: ready {warm['ready_s'] / fresh['ready_s']:.2f}x"
        if fresh["first_token_s"] and warm["first_token_s"]:
            line += f", first token {warm['first_token_s'] / fresh['first_token_s']:.2f}x"
        print(line)
    if peer.get("skipped"):
        print(f"   peer: {peer['skipped']}")
    elif peer:
        print(f"   peer: {peer['gguf']} ({peer['note']})")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", help="default: every configs/*.yaml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_startup"), help="server logs go here")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_startup.json"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per start (launch to the request's end)")
    ap.add_argument("--only", choices=["fresh", "warm", "both"], default="both")
    ap.add_argument("--port", type=int, default=8600, help="first port tried; each start takes the next free one")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"),
                    help="llama.cpp's llama-server binary for the peer (default $LLAMA_SERVER)")
    ap.add_argument("--peer-only", action="store_true", help="time llama-server alone, no jaxserve starts")
    ap.add_argument("--cache-root", type=Path, help="where fresh cache dirs are made (default: the temp dir)")
    ap.add_argument("--keep-cache", action="store_true", help="keep each fresh cache dir after its starts")
    args = ap.parse_args(argv)
    if args.peer_only and not args.llama_server:
        ap.error("--peer-only needs --llama-server (or $LLAMA_SERVER)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = args.configs or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))
    args.out.mkdir(parents=True, exist_ok=True)
    _port[0] = args.port
    real = user_cache()
    result = {
        "tool": "tools/bench_startup.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code": code_state(), "machine": machine(),
        "settings": {"only": args.only, "timeout_s": args.timeout, "peer_only": args.peer_only,
                     "prompt": PROMPT, "max_tokens": MAX_TOKENS, "poll_s": POLL_S, "user_cache": str(real),
                     "llama_server": args.llama_server,
                     "llama_server_version": llama_version(args.llama_server) if args.llama_server else None},
        "configs": [],
    }
    save = lambda: args.json.write_text(json.dumps(result, indent=1))
    print(f"{result['machine']['cpu_model']}, {result['machine']['cpu_count']} cores, "
          f"load {result['machine']['load_avg_1m_at_start']:.2f}; commit {str(result['code']['commit'])[:10]}; "
          f"user cache {real}")
    for config in configs:
        print(f"{config}:", flush=True)
        run_config(config, args, real, result, save)
        save()
    for entry in result["configs"]:
        print_config(entry)
    print(f"\nraw figures: {args.json}; server logs: {args.out}")
    failed = any(r.get("error") for e in result["configs"]
                 for r in [*e.get("jaxserve", {}).values(), *((e.get("peer") or {}).get("starts", {}).values())])
    return 1 if failed or any("error" in e for e in result["configs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
