"""ASGI middleware of the OpenAI server: API key, request size limit, X-Request-Id.

Each answers in OpenAI's error shape before the route runs, so a refused request never reaches
the parser, the tokenizer or the engine.
"""
from __future__ import annotations

import json
import re
import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import unquote

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jaxserve.server.api_errors import APIError

# Paths anyone may read even when an API key is set: probes, scrapes and the docs.
OPEN_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json")
# Paths a browser reads: besides the header, they take the key from the cookie the dashboard's
# login form sets (SameSite=Strict, so another site's page cannot send it). The API does not.
BROWSER_PATHS = ("/dashboard", "/debug/")
KEY_COOKIE = "jaxserve_api_key"
# What an X-Request-Id may hold: it is echoed in a header and shown in response ids.
_REQUEST_ID = re.compile(r"[!-~]{1,256}")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if raw is None:
        return None
    try:
        morsel = SimpleCookie(raw.decode("latin-1")).get(name)
    except CookieError:
        return None
    return None if morsel is None else unquote(morsel.value)   # the form percent-encodes it


class APIKeyMiddleware:
    """Answers 401 unless `Authorization: Bearer <key>` matches; probes and docs stay open.

    The dashboard and its state feed also accept the key from the login form's cookie; without
    it /dashboard answers 401 with that form instead of a JSON error.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.api_key = api_key.encode()
        self.expected = b"Bearer " + self.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or b""
        ok = secrets.compare_digest(given, self.expected)
        browser = path.startswith(BROWSER_PATHS)
        if not ok and browser:
            cookie = _cookie(scope, KEY_COOKIE)
            ok = cookie is not None and secrets.compare_digest(cookie.encode("latin-1"), self.api_key)
        if not ok:
            if path == "/dashboard":
                return await HTMLResponse(LOGIN_PAGE, status_code=401)(scope, receive, send)
            err = APIError(401, "missing or wrong API key (send `Authorization: Bearer <key>`)",
                           type="authentication_error", code="invalid_api_key")
            return await JSONResponse(err.body(), status_code=401)(scope, receive, send)
        return await self.app(scope, receive, send)


# The key goes into a cookie on this origin only; the page reloads and the server checks it.
LOGIN_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>jaxserve dashboard: sign in</title>
<style>body{{font:14px system-ui,sans-serif;margin:4em auto;max-width:24em}}input{{width:100%;padding:.4em}}</style>
</head><body><h1>jaxserve dashboard</h1><p>This server needs its API key.</p>
<form id="login"><input id="key" type="password" autocomplete="current-password" placeholder="API key" autofocus>
<p><button type="submit">Open the dashboard</button></p></form>
<script>document.getElementById("login").onsubmit = (e) => {{
  e.preventDefault();
  document.cookie = "{KEY_COOKIE}=" + encodeURIComponent(document.getElementById("key").value)
    + "; path=/; SameSite=Strict";
  location.reload();
}};</script></body></html>"""


class BodyLimitMiddleware:
    """413 for a body past max_bytes: at once from Content-Length, else as the bytes arrive.

    A declared length is refused before a byte of the body is read; a chunked body is counted
    while the route reads it, and the route's read raises the 413 (FastAPI re-raises
    HTTPExceptions from its body parsing, and app.py renders them in OpenAI's shape).
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(413, f"request body is larger than server.max_request_bytes ({self.max_bytes} bytes)",
                        code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            err = self._error() if declared.isdigit() else APIError(400, "Content-Length is not a number")
            response = JSONResponse(err.body(), status_code=err.status, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, self._error().message)
            return message

        return await self.app(scope, counted, send)


class RequestIdMiddleware:
    """Echoes a client's X-Request-Id on the response (as vLLM does); 400 if it is malformed."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = _header(scope, b"x-request-id")
        if given is None:
            return await self.app(scope, receive, send)
        if not _REQUEST_ID.fullmatch(given.decode("latin-1")):
            err = APIError(400, "X-Request-Id must be 1 to 256 visible ASCII characters",
                           param="X-Request-Id", code="invalid_request_id")
            return await JSONResponse(err.body(), status_code=400)(scope, receive, send)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", given)]
            await send(message)

        return await self.app(scope, receive, send_with_id)


def client_request_id(raw: Request) -> str | None:
    """The X-Request-Id RequestIdMiddleware has checked, if the client sent one."""
    return raw.headers.get("x-request-id")


class _LenientTextRequest(Request):
    """Decodes JSON bodies with "surrogateescape": invalid UTF-8 bytes become lone surrogates.

    json.loads would otherwise fail on them as a whole ("error parsing the body"); this way the
    string that holds them is found and named by admission.find_invalid_text.
    """

    async def json(self):
        if not hasattr(self, "_json"):
            self._json = json.loads((await self.body()).decode("utf-8", "surrogateescape"))
        return self._json


class LenientTextRoute(APIRoute):
    """An APIRoute whose handlers see `_LenientTextRequest`s."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            return await handler(_LenientTextRequest(request.scope, request.receive))

        return route
