"""Decode worker (`jaxserve serve --role decode`): ticket + sequence state in, NDJSON deltas out.

D workflow, one sequence:
  1. POST /decode {state: SeqState, ticket: Ticket | null}: the handler pulls the staged pages
     from the prefill worker's transfer server straight into this worker's pool sharding, on a
     thread of its own and bounded by --kv-ticket-timeout (KVPuller.pull), then tells the prefill
     worker to release them (POST /release, in the background). A failed pull answers 502: the
     router prefills the sequence again elsewhere.
  2. It parks (state, pulled groups, grammar state) and starts AsyncEngine.generate; on the
     engine thread `_start` allocates pages, scatters the groups into them (pools donated) and
     adopts the sequence (`Engine.import_sequence(..., pages)`). If the pool is full, or there was
     no ticket, the sequence is prefilled here instead (recompute). A constrained sequence's
     grammar was compiled and advanced over every token it already emitted on a thread before
     the pull (worker.grammar_for; a bad constraint or replay is a 400 and the ticket is
     released), so every token it samples here is masked, EOS only where the grammar may end.
  3. Every step's delta for it goes out as one JSON line, until one is finished. A client that
     disconnects aborts the sequence (its pages are freed at the next step).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from jaxserve.async_engine import AsyncEngine
from jaxserve.disagg.remote_transfer import KVPuller
from jaxserve.disagg.worker import (EngineWorker, create_worker_app, first_delta, grammar_for,
                                    in_thread, parse_state)
from jaxserve.disagg.worker_api import SeqState, Ticket, delta_to_json, error_body
from jaxserve.engine import Engine
from jaxserve.page_table import OutOfPages
from jaxserve.structured import GrammarState

log = logging.getLogger(__name__)


class DecodeWorker(EngineWorker):
    role = "decode"

    def __init__(self, engine: Engine, puller: KVPuller):
        super().__init__(engine)
        self.puller = puller
        self.recomputed = 0      # sequences prefilled here because their pages did not fit

    def _start(self, request_id: str,
               item: tuple[SeqState, Ticket | None, list | None, GrammarState | None]) -> None:
        state, ticket, groups, grammar = item
        pages = None
        expected = -(-(len(state.all_ids) - 1) // self.config.cache.page_size)
        if groups is not None and ticket.num_pages == expected:
            pages = self._allocate(ticket.num_pages)
            if pages is not None:
                self.engine.runner.kv = self.puller.scatter(self.engine.runner.kv, groups, pages)
        if pages is None:
            self.recomputed += 1
        self.engine.import_sequence(request_id, state.index, state.prompt_ids, state.output_ids,
                                    state.params, state.seed, pages, grammar=grammar)

    def _allocate(self, n: int) -> list[int] | None:
        alloc = self.engine.scheduler.allocator
        pages: list[int] = []
        try:
            for _ in range(n):
                pages.append(alloc.allocate())
        except OutOfPages:
            alloc.release(pages)
            return None
        return pages


def create_decode_app(async_engine: AsyncEngine, worker: DecodeWorker, warmup: bool,
                      pull_timeout_s: float = 30.0) -> FastAPI:
    app = create_worker_app(async_engine, worker, warmup)
    background: set[asyncio.Task] = set()

    async def release(ticket: Ticket) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await client.post(ticket.release_url, json={"uuid": ticket.uuid})
        except httpx.HTTPError as e:     # the pages expire on their own
            log.info("could not release KV ticket at %s: %r", ticket.release_url, e)

    def release_later(ticket: Ticket) -> None:
        if ticket.release_url:
            task = asyncio.create_task(release(ticket))
            background.add(task)
            task.add_done_callback(background.discard)

    @app.post("/decode")
    async def decode(raw: Request) -> Response:
        parsed = await parse_state(raw, "state")
        if isinstance(parsed, Response):
            return parsed
        body, state = parsed
        rid = state.request_id
        try:
            ticket = Ticket.from_json(body["ticket"]) if body.get("ticket") else None
        except ValueError as e:
            return JSONResponse(error_body(400, str(e)), status_code=400)
        if rid in worker.pending:
            return JSONResponse(error_body(400, f"request_id {rid!r} is in use"), status_code=400)
        grammar = await grammar_for(worker, state)   # before the pull: a refusal costs no transfer
        if isinstance(grammar, Response):
            if ticket is not None:
                release_later(ticket)
            return grammar
        groups = None
        if ticket is not None:
            t0 = time.perf_counter()
            try:
                groups = await in_thread(worker.puller.pull, ticket, timeout_s=pull_timeout_s)
            except Exception as e:  # noqa: BLE001 - any failure: the router re-prefills elsewhere
                worker.metrics.kv_pull_failures.inc()
                return JSONResponse(error_body(502, f"KV pull from {ticket.address} failed: {e!r}",
                                               "kv_transfer_error"), status_code=502)
            worker.observe_transfer(time.perf_counter() - t0, ticket.nbytes)
            release_later(ticket)
        worker.pending[rid] = (state, ticket, groups, grammar)
        gen = async_engine.generate(rid, state.all_ids, state.params)
        first = await first_delta(gen)
        if isinstance(first, Response):
            worker.pending.pop(rid, None)
            return first

        async def lines() -> AsyncIterator[str]:
            try:
                yield json.dumps(delta_to_json(first)) + "\n"
                if first.finished:
                    return
                async for d in gen:
                    yield json.dumps(delta_to_json(d)) + "\n"
            finally:     # also on disconnect: Starlette cancels this generator
                await gen.aclose()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app
