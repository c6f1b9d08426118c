"""The dashboard: GET /dashboard (one static page), GET /debug/state (JSON) and
GET /debug/state/stream (the same as server-sent events).

The page and its script ship in the package (dashboard_static/) and load nothing from elsewhere,
so it works offline. The state is the engine's bounded snapshot (jaxserve/engine_state.py),
taken between steps at most once per async_engine.STATE_MIN_INTERVAL_S however many pages
watch, and never holds prompt or output text. With an API key set, all three need it (header,
or the cookie of the login form: server/middleware.py).
"""
from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import AsyncIterator

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from jaxserve.server.api_errors import APIError

STATIC = resources.files("jaxserve.server") / "dashboard_static"
# The page inlines its script and style: one request, nothing to resolve against a base URL,
# and the replay export is the same file with the recorded states appended.
_ASSETS = ("dashboard.css", "dashboard.js")


def dashboard_page(recorded: list[dict] | None = None) -> str:
    """The dashboard as one self-contained HTML document; with `recorded` states it plays them
    back instead of reading a live feed (a static export)."""
    html = (STATIC / "index.html").read_text()
    css, js = ((STATIC / name).read_text() for name in _ASSETS)
    feed = "null" if recorded is None else json.dumps(recorded).replace("</", "<\\/")
    return (html.replace("/*CSS*/", css)
                .replace("/*RECORDED*/null", feed)
                .replace("/*JS*/", js))


def add_dashboard_routes(app: FastAPI) -> None:
    def engine_state_source():
        engine = app.state.engine   # a ServingEngine: an AsyncEngine, or the multi-process Router
        if not hasattr(engine, "debug_state"):
            raise APIError(404, "this server's engine has no state feed (the dashboard needs one)",
                           type="not_found_error", code="no_state_feed")

        async def state() -> dict:
            # Readiness from the serving engine itself, then its panels (engines, hand-offs).
            return {"model": engine.model_name, "ready": engine.ready, "healthy": engine.healthy,
                    "programs_pending": engine.stats().programs_pending,
                    "start_phases": dict(getattr(engine, "start_phases", {})),
                    **await engine.debug_state()}
        return state

    # Operator pages, not part of the API a client codes against: left out of /openapi.json.
    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> Response:
        return HTMLResponse(dashboard_page(), headers={"Cache-Control": "no-store"})

    @app.get("/debug/state", include_in_schema=False)
    async def debug_state() -> Response:
        state = await engine_state_source()()
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    @app.get("/debug/state/stream", include_in_schema=False)
    async def debug_state_stream(raw: Request, interval: float = Query(1.0, ge=0.25, le=60.0)) -> Response:
        source = engine_state_source()

        async def events() -> AsyncIterator[str]:
            while not await raw.is_disconnected():
                yield f"data: {json.dumps(await source())}\n\n"
                await asyncio.sleep(interval)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
