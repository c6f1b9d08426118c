"""Prefill worker (`jaxserve serve --role prefill`): prompt in, first token + KV ticket out.

P workflow, one sequence:
  1. POST /prefill {SeqState}: a constrained sequence's grammar is compiled and replayed over the
     tokens it already emitted on a thread (worker.grammar_for); the handler parks the state and
     starts AsyncEngine.generate; on the engine thread `_start` imports it
     (`Engine.import_sequence`: a resumed sequence brings the tokens it already emitted, and they
     are prefilled too). The first token is sampled under the grammar like any other.
  2. Engine.step computes the prompt (chunked, prefix cache first), samples the first token and
     calls the `handoff` hook, still inside the step: `_on_prefilled` stages exactly the
     sequence's pages on the transfer server (remote_transfer.KVStager), releases them from the
     allocator at once (they stay in the prefix cache) and files the Ticket.
  3. The step's delta (the first token) reaches the handler, which answers {delta, ticket}; the
     ticket is null when the first token already finished the sequence.
  4. The decode worker pulls the pages and POSTs /release {uuid}; unpulled pages expire after
     --kv-ticket-timeout seconds.
"""
from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from jaxserve.async_engine import AsyncEngine
from jaxserve.disagg.remote_transfer import KVStager
from jaxserve.disagg.worker import (EngineWorker, create_worker_app, first_delta, grammar_for,
                                    parse_state)
from jaxserve.disagg.worker_api import SeqState, Ticket, delta_to_json
from jaxserve.engine import Engine
from jaxserve.sequence import Sequence
from jaxserve.server.app import unless_disconnected
from jaxserve.structured import GrammarState
from jaxserve.tokenizer import IncrementalDetokenizer


class PrefillWorker(EngineWorker):
    role = "prefill"

    def __init__(self, engine: Engine, stager: KVStager):
        super().__init__(engine)
        self.stager = stager
        self.tickets: dict[str, Ticket] = {}          # filled on the engine thread, read by HTTP
        engine.handoff = self._on_prefilled

    def _start(self, request_id: str, item: tuple[SeqState, GrammarState | None]) -> None:
        state, grammar = item
        self.engine.import_sequence(request_id, state.index, state.prompt_ids, state.output_ids,
                                    state.params, state.seed, grammar=grammar)

    def _on_prefilled(self, seq: Sequence, detok: IncrementalDetokenizer) -> None:
        t0 = time.perf_counter()
        ticket = self.stager.stage(self.engine.runner.kv, seq.pages)
        self.engine.scheduler.allocator.release(seq.pages)
        seq.pages = []
        self.tickets[seq.request_id] = ticket
        self.observe_transfer(time.perf_counter() - t0, ticket.nbytes)


def create_prefill_app(async_engine: AsyncEngine, worker: PrefillWorker, warmup: bool) -> FastAPI:
    app = create_worker_app(async_engine, worker, warmup, staged_bytes=lambda: worker.stager.staged_bytes)

    @app.post("/prefill")
    async def prefill(raw: Request) -> Response:
        parsed = await parse_state(raw)
        if isinstance(parsed, Response):
            return parsed
        _, state = parsed
        rid = state.request_id
        grammar = await grammar_for(worker, state)
        if isinstance(grammar, Response):
            return grammar
        if rid in worker.pending:
            return JSONResponse({"error": {"message": f"request_id {rid!r} is in use"}}, status_code=400)
        worker.pending[rid] = (state, grammar)
        gen = async_engine.generate(rid, state.all_ids, state.params)
        answered = False
        try:
            first = await unless_disconnected(first_delta(gen), raw)
            if first is None or isinstance(first, Response):
                return first if first is not None else Response(status_code=499)
            ticket = worker.tickets.pop(rid, None)
            answered = True
            return JSONResponse({"delta": delta_to_json(first),
                                 "ticket": ticket.to_json() if ticket else None})
        finally:
            await gen.aclose()
            worker.pending.pop(rid, None)
            if not answered:       # nobody will pull what this request staged
                ticket = worker.tickets.pop(rid, None)
                if ticket is not None:
                    worker.stager.release(ticket.uuid)

    @app.post("/release")
    async def release(raw: Request) -> Response:
        try:
            uuid = int((await raw.json())["uuid"])
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": {"message": f"bad request body: {e}"}}, status_code=400)
        return JSONResponse({"released": worker.stager.release(uuid)})

    return app
