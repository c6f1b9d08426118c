"""What prefill and decode workers share: an Engine adapter for AsyncEngine, and the worker app.

A worker is one Engine on its own devices, driven by AsyncEngine (one engine thread, deltas to
asyncio through per-request queues). Its requests arrive as SeqStates (worker_api.py) instead of
prompts: the HTTP handler parks the state in `EngineWorker.pending[request_id]`, then calls
`AsyncEngine.generate`, whose ("add", ...) command reaches `add_request` on the engine thread,
which takes the state from there. So admission checks, aborts on disconnect and failing every
request loudly when the engine thread dies all come from AsyncEngine unchanged.

Routes of every worker: GET /health (503 until warm), /metrics (Prometheus), /load (JSON the
router polls: queue length and KV usage), /info; each role adds its own (prefill_worker.py,
decode_worker.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from jaxserve.async_engine import AsyncEngine
from jaxserve.disagg.metrics import WorkerMetrics
from jaxserve.disagg.worker_api import SeqState, error_body
from jaxserve.engine import Engine
from jaxserve.errors import EngineDeadError, EngineNotReadyError, EngineOverloadedError, QueueFull
from jaxserve.metrics import CONTENT_TYPE, ServerMetrics
from jaxserve.outputs import EngineStats, SequenceDelta
from jaxserve.sampling_params import SamplingParams
from jaxserve.server.dashboard import add_dashboard_routes
from jaxserve.structured import GrammarState


class EngineWorker:
    """The Engine interface AsyncEngine drives; subclasses turn a parked SeqState into a sequence."""

    role = "worker"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.config = engine.config
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self.grammars = engine.grammars
        self.pending: dict[str, Any] = {}   # request id -> what add_request needs (set by HTTP)
        self.transfer_bytes = 0
        self.transfers = 0
        self.metrics: WorkerMetrics | None = None   # set by create_worker_app

    def observe_transfer(self, seconds: float, nbytes: int) -> None:
        self.transfer_bytes += nbytes
        self.transfers += 1
        if self.metrics is not None:    # prometheus_client metrics are thread-safe
            self.metrics.kv_transfer_seconds.observe(seconds)
            self.metrics.kv_transfer_size.observe(nbytes)

    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.engine.validate_request(prompt_token_ids, params)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        item = self.pending.pop(request_id, None)
        if item is None:
            raise ValueError(f"request_id {request_id!r} has no sequence state")
        if request_id in self.engine.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        waiting = len(self.engine.scheduler.waiting)
        if waiting >= self.config.scheduler.max_waiting:
            raise QueueFull(f"{waiting} requests are waiting "
                            f"(scheduler.max_waiting = {self.config.scheduler.max_waiting})")
        self._start(request_id, item)

    def _start(self, request_id: str, item: Any) -> None:
        raise NotImplementedError

    def abort_request(self, request_id: str) -> list[SequenceDelta]:
        return self.engine.abort_request(request_id)

    def step(self) -> list[SequenceDelta]:
        return self.engine.step()

    def has_unfinished_requests(self) -> bool:
        return self.engine.has_unfinished_requests()

    def warmup(self) -> None:
        self.engine.warmup()

    def warmup_plan(self):
        return self.engine.warmup_plan()

    def debug_state(self) -> dict:
        """The dashboard's snapshot of this worker's engine (engine_state.py), named by role."""
        return self.engine.debug_state(self.role)

    def stats(self) -> EngineStats:
        return dataclasses.replace(self.engine.stats(), kv_transfer_bytes=self.transfer_bytes,
                                   kv_transfers=self.transfers)


def engine_error(e: BaseException) -> JSONResponse:
    """AsyncEngine refusals -> the status the router acts on (400 final, 429/503 try elsewhere)."""
    if isinstance(e, ValueError):
        return JSONResponse(error_body(400, str(e)), status_code=400)
    if isinstance(e, EngineOverloadedError):
        return JSONResponse(error_body(429, str(e), "rate_limit_error"), status_code=429)
    if isinstance(e, (EngineNotReadyError, EngineDeadError, StopAsyncIteration)):
        return JSONResponse(error_body(503, str(e) or "aborted", "service_unavailable_error"), status_code=503)
    raise e


async def first_delta(gen: AsyncIterator[SequenceDelta]) -> SequenceDelta | JSONResponse:
    """The first delta of a generation, or the error response its refusal maps to."""
    try:
        return await gen.__anext__()
    except (ValueError, EngineOverloadedError, EngineNotReadyError, EngineDeadError,
            StopAsyncIteration) as e:
        return engine_error(e)


async def parse_state(raw: Request, key: str | None = None) -> tuple[dict, SeqState] | JSONResponse:
    try:
        body = await raw.json()
        return body, SeqState.from_json(body[key] if key else body)
    except (ValueError, KeyError, TypeError) as e:
        return JSONResponse(error_body(400, f"bad request body: {e}"), status_code=400)


async def grammar_for(worker: EngineWorker, state: SeqState) -> GrammarState | JSONResponse | None:
    """The sequence's grammar state, advanced over the tokens it already emitted; None if it is
    unconstrained; a 400 naming the field if the constraint or the replay is invalid.

    Compiling a grammar takes up to seconds and a replay is one matcher step per emitted token,
    so both run on a thread here, as the server compiles on its tokenizer threads: the engine
    thread only attaches the ready state (Engine.import_sequence(..., grammar=)).
    """
    spec = state.params.structured
    if spec is None:
        return None
    grammars = worker.engine.grammars

    def build() -> GrammarState:
        try:
            grammars.compile(spec)
        except ValueError as e:   # it names structured.<kind>, which a SeqState holds in params
            raise ValueError(f"params.{e}") from None
        return grammars.state_after(spec, state.output_ids)

    try:
        return await asyncio.to_thread(build)
    except ValueError as e:
        return JSONResponse(error_body(400, f"bad sequence state: {e}"), status_code=400)


async def in_thread(fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
    """fn(*args) on a fresh daemon thread, awaited with a timeout (the thread may outlive it)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="jaxserve-kv-pull", daemon=True).start()
    return await asyncio.wait_for(fut, timeout_s)


def create_worker_app(async_engine: AsyncEngine, worker: EngineWorker, warmup: bool,
                      staged_bytes: Callable[[], float] | None = None) -> FastAPI:
    """The routes every worker has; the caller adds its role's routes to the returned app."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async_engine.start(warmup=warmup)
        yield
        await async_engine.shutdown(drain=True)

    app = FastAPI(title=f"jaxserve {worker.role} worker", lifespan=lifespan)
    app.state.engine = async_engine
    app.state.worker = worker
    metrics = ServerMetrics(async_engine.stats)
    metrics.warmup_time.set_function(lambda: async_engine.warmup_time_s or 0.0)
    app.state.metrics = metrics
    worker.metrics = WorkerMetrics(metrics.registry, worker.role,
                                   lambda: async_engine.stats().num_waiting, staged_bytes)

    @app.get("/health")
    async def health() -> Response:
        if async_engine.ready:
            return JSONResponse({"status": "ok", "role": worker.role})
        why = "engine failed" if async_engine.error is not None else "engine not ready"
        return JSONResponse(error_body(503, why, "service_unavailable_error"), status_code=503)

    @app.get("/load")
    async def load() -> Response:
        s = async_engine.stats()
        return JSONResponse({"role": worker.role, "ready": async_engine.ready,
                             "num_running": s.num_running, "num_waiting": s.num_waiting,
                             "num_in_flight": async_engine.num_in_flight,
                             "kv_pages_used": s.kv_pages_used, "kv_pages_total": s.kv_pages_total,
                             "kv_transfer_bytes": s.kv_transfer_bytes, "kv_transfers": s.kv_transfers})

    @app.get("/info")
    async def info() -> Response:
        return JSONResponse({"role": worker.role, "model": worker.model_name,
                             "max_model_len": worker.max_model_len,
                             "page_size": worker.config.cache.page_size})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    add_dashboard_routes(app)   # each worker's own view; the router's shows them all
    return app
