"""The FastAPI app: thin routes over OpenAIServing, OpenAI-shaped errors, API-key check.

`create_app(async_engine, config)` builds a fresh app whose state (engine, serving, metrics) lives
in `app.state`, so a process (or a test) may hold several. Each route only parses the request,
hands it to serving.py, and turns the result into a JSON or SSE response; a request whose client
disconnects is cancelled (see `unless_disconnected`), which aborts it in the engine.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, AsyncIterator, Awaitable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxserve.interfaces import ServingEngine
from jaxserve.config import EngineConfig
from jaxserve.metrics import CONTENT_TYPE, ServerMetrics
from jaxserve.sampling_params import short_repr
from jaxserve.server import protocol as p
from jaxserve.server.dashboard import add_dashboard_routes
from jaxserve.server.middleware import (APIKeyMiddleware, BodyLimitMiddleware, LenientTextRoute,
                                        RequestIdMiddleware, client_request_id)
from jaxserve.server.serving import APIError, OpenAIServing

logger = logging.getLogger(__name__)


def create_app(async_engine: ServingEngine, config: EngineConfig, start_time_s: float | None = None,
               ) -> FastAPI:
    """Build the app around a ServingEngine (an AsyncEngine or a Router); its lifespan starts the engine thread and drains it.

    Args:
        async_engine: started or not; the lifespan starts it (warming up if config.server.warmup).
        config: the served config; server.api_key (or env JAXSERVE_API_KEY) turns auth on.
        start_time_s: time.monotonic() at process start, for the start-up time metric.
    """
    start_time_s = time.monotonic() if start_time_s is None else start_time_s
    metrics = ServerMetrics(async_engine.stats, lambda: getattr(async_engine, "start_phases", {}))
    metrics.warmup_time.set_function(lambda: async_engine.warmup_time_s or 0.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async_engine.start(warmup=config.server.warmup, background=config.server.warmup_in_background)
        announce = asyncio.create_task(_announce_ready(async_engine, config, metrics, start_time_s))
        yield
        announce.cancel()
        await async_engine.shutdown(drain=True)
        app.state.serving.close()

    # No trailing-slash redirects: Starlette builds their Location from the client's Host header.
    app = FastAPI(title="jaxserve", summary="OpenAI-compatible LLM server on JAX", lifespan=lifespan,
                  redirect_slashes=False)
    app.router.route_class = LenientTextRoute
    app.state.engine = async_engine
    app.state.config = config
    app.state.metrics = metrics
    app.state.serving = OpenAIServing(async_engine, metrics, config.server.tokenizer_threads)
    # Added last = outermost: the size limit runs first, then the key, then the request id.
    app.add_middleware(RequestIdMiddleware)
    api_key = config.server.api_key or os.environ.get("JAXSERVE_API_KEY") or None
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.server.max_request_bytes)
    _add_error_handlers(app)
    _add_routes(app)
    add_dashboard_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    serving: OpenAIServing = app.state.serving

    @app.post("/v1/completions", response_model=p.CompletionResponse)
    async def completions(body: p.CompletionRequest, raw: Request) -> Response:
        work = serving.create_completion(body, client_request_id(raw))
        return _respond(await unless_disconnected(work, raw))

    @app.post("/v1/chat/completions", response_model=p.ChatCompletionResponse)
    async def chat_completions(body: p.ChatCompletionRequest, raw: Request) -> Response:
        work = serving.create_chat_completion(body, client_request_id(raw))
        return _respond(await unless_disconnected(work, raw))

    @app.get("/v1/models", response_model=p.ModelList)
    async def models() -> p.ModelList:
        return serving.models()

    @app.post("/tokenize", response_model=p.TokenizeResponse)
    async def tokenize(body: p.TokenizeRequest) -> p.TokenizeResponse:
        return await serving.tokenize(body)

    @app.post("/detokenize", response_model=p.DetokenizeResponse)
    async def detokenize(body: p.DetokenizeRequest) -> p.DetokenizeResponse:
        return await serving.detokenize(body)

    @app.get("/health")
    async def health() -> Response:
        engine: ServingEngine = app.state.engine
        if engine.ready:
            # Ready while programs may still be building in the background (server.warmup_in_background).
            return JSONResponse({"status": "ok", "programs_pending": engine.stats().programs_pending})
        why = "engine failed" if engine.error is not None else "engine not ready"
        err = APIError(503, why, type="service_unavailable_error", code="engine_unavailable")
        return JSONResponse(err.body(), status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE)


def _respond(result: Any) -> Response:
    if result is None:  # the client left; nobody reads this
        return Response(status_code=499)
    if hasattr(result, "model_dump"):
        return JSONResponse(result.model_dump())
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def unless_disconnected(work: Awaitable[Any], raw: Request) -> Any:
    """Run `work`, cancelling it if the client disconnects first (then return None).

    The body has been read already, so the next ASGI message is http.disconnect. Once a stream
    is returned, Starlette's StreamingResponse watches for the disconnect itself.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(raw))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def _wait_disconnect(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            err = APIError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
                           code="invalid_json")
        else:
            loc = [str(x) for x in first.get("loc", ()) if x != "body"]
            # A union field (e.g. prompt) reports one error per member; name the field once.
            param = ".".join(x for x in loc if not _is_type_tag(x)) or None
            if first.get("type") == "extra_forbidden":   # never dropped silently
                err = APIError(400, f"{param} is not a field this server knows or supports", param=param,
                               code="unknown_field")
            else:
                err = APIError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}"
                                    f" (got {short_repr(first.get('input'))})", param=param)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        err = APIError(e.status_code, str(e.detail), type="invalid_request_error")
        return JSONResponse(err.body(), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        err = APIError(500, f"internal error: {type(e).__name__}: {short_repr(str(e), 300)}",
                       type="internal_server_error")
        return JSONResponse(err.body(), status_code=500)


def _is_type_tag(x: str) -> bool:
    return x in ("str", "int", "float", "bool") or x.startswith(("list[", "dict["))


async def _announce_ready(engine: ServingEngine, config: EngineConfig, metrics: ServerMetrics,
                          start_time_s: float) -> None:
    ready = await asyncio.to_thread(engine.wait_ready)
    if not ready:
        logger.error("engine failed during warm-up: %r", engine.error)
        return
    startup_s = time.monotonic() - start_time_s
    metrics.startup_time.set(startup_s)
    logger.info("jaxserve ready: serving %s at http://%s:%d/v1 (start-up %.1f s, warm-up %.1f s)",
                engine.model_name, config.server.host, config.server.port, startup_s,
                engine.warmup_time_s or 0.0)
