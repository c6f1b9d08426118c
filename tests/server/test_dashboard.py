"""The dashboard through HTTP: GET /dashboard (one offline page), GET /debug/state and its SSE
stream on a live server, the rate bound on snapshots, and the API key (header or login cookie)."""
from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from conftest import REAL_OVERRIDES, TINY_CONFIG, live_server

from jaxserve import async_engine
from jaxserve.config import load_config

pytestmark = pytest.mark.slow


def _complete(url: str, prompt: str, headers=None, max_tokens: int = 6) -> dict:
    r = httpx.post(f"{url}/v1/completions", headers=headers, timeout=120,
                   json={"model": "tiny-random", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def test_state_feed_follows_traffic(real_server):
    url = real_server.url
    before = httpx.get(f"{url}/debug/state").json()
    _complete(url, "the state feed sees this request")
    time.sleep(async_engine.STATE_MIN_INTERVAL_S + 0.05)   # a snapshot may be this old
    state = httpx.get(f"{url}/debug/state").json()
    assert state["ready"] and state["model"] == real_server.model
    (engine,) = state["engines"]
    (old,) = before["engines"]
    pool = engine["pool"]
    assert len(pool["cells"]) == pool["num_pages"] == real_server.config.cache.num_pages
    assert engine["num_steps"] > old["num_steps"] and engine["stats"]["generation_tokens_total"] >= \
        old["stats"]["generation_tokens_total"] + 6
    assert len(engine["finished"]) >= min(len(old["finished"]) + 1, 128)
    assert "the state feed sees this request" not in json.dumps(state)


def test_snapshots_are_rate_bounded(real_server, monkeypatch):
    """Twenty readers within the minimum interval cost the engine thread one snapshot: those
    arriving while it is built wait for it, later ones get it from the cache."""
    monkeypatch.setattr(async_engine, "STATE_MIN_INTERVAL_S", 30.0)   # longer than this test
    engine = real_server.engine.engine
    calls = []
    original = engine.debug_state
    monkeypatch.setattr(engine, "debug_state", lambda *a: calls.append(1) or original(*a))
    real_server.engine._state_pending = None
    results = []
    threads = [threading.Thread(target=lambda: results.append(httpx.get(f"{real_server.url}/debug/state")))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200] * 20
    assert len(calls) == 1


def test_state_stream_sends_events(real_server):
    with httpx.stream("GET", f"{real_server.url}/debug/state/stream", params={"interval": 0.25},
                      timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) == 2:
                break
    assert all(e["engines"][0]["pool"]["num_pages"] > 0 for e in events)
    assert httpx.get(f"{real_server.url}/debug/state/stream", params={"interval": 0}).status_code == 400


def test_dashboard_page_is_self_contained(real_server):
    r = httpx.get(f"{real_server.url}/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "EventSource" in html and ".pool-grid" in html        # script and style inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)   # nothing fetched elsewhere
    assert "/*JS*/" not in html and "/*CSS*/" not in html


def test_api_key_guards_dashboard_and_feed():
    from jaxserve.engine_factory import make_engine
    config = load_config(TINY_CONFIG, {**REAL_OVERRIDES, "server": {"api_key": "dash-key"}})
    with live_server(make_engine(config), config, "real") as live:
        url = live.url
        r = httpx.get(f"{url}/dashboard")
        assert r.status_code == 401 and "<form" in r.text and "API key" in r.text
        for path in ("/debug/state", "/debug/state/stream"):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bearer = {"Authorization": "Bearer dash-key"}
        assert httpx.get(f"{url}/dashboard", headers=bearer).status_code == 200
        assert httpx.get(f"{url}/debug/state", headers=bearer).json()["ready"]
        cookie = {"Cookie": "jaxserve_api_key=dash-key"}
        assert httpx.get(f"{url}/dashboard", headers=cookie).status_code == 200
        assert httpx.get(f"{url}/debug/state", headers=cookie).status_code == 200
        assert httpx.get(f"{url}/debug/state", headers={"Cookie": "jaxserve_api_key=wrong"}).status_code == 401
        # The cookie opens the dashboard only, never the API.
        r = httpx.post(f"{url}/v1/completions", headers=cookie, json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 401
        _complete(url, "with the key", headers=bearer)
