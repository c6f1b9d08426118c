"""ASGI middleware of the OpenAI server: API key, request size limit, X-Request-Id.

Each answers in OpenAI's error shape before the route runs, so a refused request never reaches
the parser, the tokenizer or the engine.
"""
from __future__ import annotations

import json
import re
import secrets

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jaxserve.server.api_errors import APIError

# Paths anyone may read even when an API key is set: probes, scrapes and the docs.
OPEN_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json")
# What an X-Request-Id may hold: it is echoed in a header and shown in response ids.
_REQUEST_ID = re.compile(r"[!-~]{1,256}")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class APIKeyMiddleware:
    """Answers 401 unless `Authorization: Bearer <key>` matches; probes and docs stay open."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or b""
        if not secrets.compare_digest(given, self.expected):
            err = APIError(401, "missing or wrong API key (send `Authorization: Bearer <key>`)",
                           type="authentication_error", code="invalid_api_key")
            return await JSONResponse(err.body(), status_code=401)(scope, receive, send)
        return await self.app(scope, receive, send)


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
