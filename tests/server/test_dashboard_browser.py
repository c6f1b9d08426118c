"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) over its DevTools
protocol (cdp.py) opens /dashboard on a live tiny server while requests run, and reads the DOM:
one pool cell per page, cells changing owner as requests start and finish, the batch timeline
growing, a click on a request outlining its cells and opening its detail; with an API key, a 401 without it and the login form letting the browser in. The
replay export opens with every network request refused and plays the recorded steps.

Screenshots land in $JAXSERVE_TEST_ARTIFACTS (default: the test's temporary directory); the path
is printed. Chromium is Debian's package: where it is missing and the tests run as root (a fresh
CI machine) the session installs it with apt-get, about a minute; elsewhere the tests are
skipped, which fails the run (tests/conftest.py) and names `apt-get install chromium`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cdp import Browser, find_chromium, install_chromium
from conftest import REAL_OVERRIDES, TINY_CONFIG, live_server

from jaxserve.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium() or install_chromium()
    if binary is None:
        pytest.skip("no chromium binary and none could be installed: apt-get install chromium")
    return binary


@pytest.fixture
def artifacts(tmp_path) -> Path:
    path = Path(os.environ.get("JAXSERVE_TEST_ARTIFACTS", tmp_path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load(url: str, n: int, max_tokens: int, headers=None) -> list[threading.Thread]:
    def one(i: int) -> None:
        httpx.post(f"{url}/v1/completions", headers=headers, timeout=300, json={
            "model": "tiny-random", "prompt": f"request {i} " * (5 + 3 * i), "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}).raise_for_status()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


OWNERS = "[...document.querySelectorAll('#engines .pool-grid .cell')].map((c) => c.dataset.owner)"
STEPS = "+document.querySelector('#engines .timeline').dataset.steps"


def test_live_dashboard_follows_requests(real_server, artifacts, chromium):
    url = real_server.url
    num_pages = real_server.config.cache.num_pages
    with Browser(chromium) as browser:
        browser.open(f"{url}/dashboard?interval=0.25",
                     wait_for="document.querySelectorAll('#engines .pool-grid .cell').length > 0")
        assert browser.eval(f"{OWNERS}.length") == num_pages          # one cell per page
        assert browser.eval("document.querySelector('#status').textContent") == "ready"
        steps_before = browser.eval(STEPS)
        seen: list[list[str]] = []
        threads = _load(url, 4, 400)
        shot = None
        clicked = None
        while any(t.is_alive() for t in threads):
            seen.append(browser.eval(OWNERS))
            if clicked is None and sum("#" in o for o in seen[-1]) > 0:
                # Clicking a request's row outlines its cells and opens its detail.
                clicked = browser.eval("(() => { const tr = document.querySelector('#engines .requests tbody tr');"
                                       " tr.click(); return tr.cells[0].textContent; })()")
                assert browser.eval("document.querySelector('#detail').hidden") is False
                assert clicked.startswith(browser.eval("document.querySelector('#detail-id').textContent"))
                picked = browser.eval("document.querySelectorAll('#engines .cell.picked').length")
                detail = browser.eval("document.querySelector('#detail-body').textContent")
                assert picked > 0 or "finished" in detail, detail
            if shot is None and sum(o.startswith("cmpl") or "#" in o for o in seen[-1]) > 4:
                shot = browser.screenshot(artifacts / "dashboard-live.png")
            time.sleep(0.2)
        for t in threads:
            t.join()
        browser.wait(f"{OWNERS}.every((o) => !o.includes('#'))", 30)   # all finished: no owners
        seen.append(browser.eval(OWNERS))
        owned = [{i for i, o in enumerate(frame) if "#" in o} for frame in seen]
        assert max(len(o) for o in owned) >= 4, "requests' pages never showed as owned"
        # A cell owned while a request ran is free or cached once it finished.
        first = next(o for o in owned if o)
        assert all("#" not in seen[-1][i] for i in first)
        assert len({o for frame in seen for o in frame if "#" in o}) >= 2    # several owners seen
        assert browser.eval(STEPS) > steps_before                           # the timeline grew
        assert browser.eval("+document.querySelector('#engines .ttft').dataset.count") >= 4
        assert clicked is not None
        if shot is None:
            shot = browser.screenshot(artifacts / "dashboard-live.png")
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_api_key_login_in_the_browser(artifacts, chromium):
    from jaxserve.engine_factory import make_engine
    config = load_config(TINY_CONFIG, {**REAL_OVERRIDES, "server": {"api_key": "browser-key"}})
    with live_server(make_engine(config), config, "real") as live, Browser(chromium) as browser:
        browser.open(f"{live.url}/dashboard", wait_for="document.querySelector('#key')")
        status = browser.eval("fetch('/debug/state').then((r) => r.status)", await_promise=True)
        assert status == 401
        assert browser.eval("document.querySelectorAll('.pool-grid').length") == 0   # no dashboard
        browser.eval("document.querySelector('#key').value = 'browser-key';"
                     "document.querySelector('#login').requestSubmit()")
        browser.wait("document.querySelectorAll('#engines .pool-grid .cell').length > 0")
        assert browser.eval(f"{OWNERS}.length") == config.cache.num_pages
        assert browser.eval("fetch('/debug/state').then((r) => r.status)", await_promise=True) == 200
        # The cookie opens the dashboard, not the API.
        assert browser.eval("fetch('/v1/models').then((r) => r.status)", await_promise=True) == 401
        print(f"screenshot: {browser.screenshot(artifacts / 'dashboard-login.png')}")


def test_replay_export_plays_offline(real_server, tmp_path, artifacts, chromium):
    """bench_serving --record-dashboard during real traffic; the file opens from disk with every
    network request refused (a proxy on a closed port), loads nothing but itself, and plays
    the recorded steps."""
    out = tmp_path / "replay.html"
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_serving.py"), "--base-url", real_server.url,
                          "--num-prompts", "6", "--concurrency", "3", "--input-len", "32", "--output-len", "120",
                          "--record-dashboard", str(out), "--record-interval", "0.25", "--out", str(tmp_path / "serving.json"),
                          "--plot", str(tmp_path / "serving.png")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    frames = json.loads(re.search(r"const RECORDED = (.*?);</script>", out.read_text(), re.S).group(1)
                        .replace("<\\/", "</"))
    assert len(frames) >= 2
    recorded_steps = frames[-1]["engines"][0]["num_steps"]
    with Browser(chromium, offline=True) as browser:
        browser.open(out.as_uri(), wait_for="document.querySelectorAll('#engines .pool-grid .cell').length > 0")
        assert browser.eval("document.querySelector('#replay-controls').hidden") is False
        browser.eval(f"const s = document.querySelector('#frame'); s.value = {len(frames) - 1};"
                     "s.dispatchEvent(new Event('input'))")
        assert browser.eval(STEPS) == recorded_steps
        assert browser.eval("+document.querySelector('#engines .timeline').dataset.shown") > 0
        assert browser.eval(f"{OWNERS}.length") == frames[-1]["engines"][0]["pool"]["num_pages"]
        assert browser.requested_urls() == [out.as_uri()]        # nothing but the file itself
        print(f"screenshot: {browser.screenshot(artifacts / 'dashboard-replay.png')}")


def test_polling_mode_draws_repeatedly(real_server, chromium):
    """`/dashboard?poll=S` fetches /debug/state every S seconds instead of holding a stream."""
    with Browser(chromium) as browser:
        browser.open(f"{real_server.url}/dashboard?poll=0.25",
                     wait_for="+document.body.dataset.frames >= 3", timeout_s=60)
        assert browser.eval(f"{OWNERS}.length") == real_server.config.cache.num_pages
        urls = browser.requested_urls()
        assert any(u.endswith("/debug/state") for u in urls)
        assert not any("/debug/state/stream" in u for u in urls)
