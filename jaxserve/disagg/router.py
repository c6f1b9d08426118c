"""Router (`jaxserve serve --role router`): the OpenAI API over P prefill and D decode workers.

`Router` has AsyncEngine's asyncio interface (generate / abort / stats / start / ready ...),
so jaxserve.server's app, protocol, validation and SSE streaming serve it unchanged. No JAX here.

Life of one sequence (a request with n samples runs n of these, seeds fixed here):
  1. pick a prefill instance: the one whose prefix cache holds the longest run of the prompt's
     pages (router-side map from page-hash chain prefixes to the instance that last prefilled
     them) unless it is much busier than the least loaded; else the least loaded.
  2. POST /prefill {SeqState} -> the first token's delta (passed on at once) and a KV Ticket. A
     structured-output constraint travels in the SeqState; each worker replays its grammar over
     the tokens already emitted, so a sequence stays constrained across hand-off and failover.
  3. pick the least loaded decode instance; POST /decode {state, ticket} and pass on each NDJSON
     delta, appending its tokens to the state, until one is finished.
  4. a worker that fails (connection refused or reset, stream cut short, 5xx) is marked down and
     the sequence goes back to 1 with prompt + tokens emitted so far and the same seed: draws
     are keyed by (seed, output index), so the continuation is exactly what it would have been
     and the client sees one stream with nothing repeated or missing.
  5. no live instance of a role, or too many failures: EngineDeadError, which the server
     answers with 503 and an OpenAI error body (mid-stream: an error event), never a hang.
A poller GETs /load of every instance twice a second (instances.py): it marks instances up and
down and keeps the queue lengths that the least-loaded choice and /metrics read.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import AsyncIterator

import httpx

from jaxserve.admission import check_request
from jaxserve.errors import EngineDeadError, EngineNotReadyError, EngineOverloadedError
from jaxserve.config import EngineConfig
from jaxserve.disagg.instances import ROLES, Instance, InstancePool
from jaxserve.disagg.worker_api import SeqState, delta_from_json
from jaxserve.outputs import EngineStats, SequenceDelta
from jaxserve.sampling_params import SamplingParams
from jaxserve.seeds import request_seed, sample_seed
from jaxserve.structured import GrammarCompiler
from jaxserve.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class _Retry(Exception):
    """This attempt failed on one instance; the sequence may be tried again elsewhere."""


_ABORTED = object()


class Router:
    """AsyncEngine's interface over remote workers (see the module docstring).

    Args:
        config: the served config (the workers' own: page_size, max_model_len, seed, limits).
        tokenizer, model_name: what the OpenAI layer encodes and reports.
        prefill_urls, decode_urls: base URLs of the workers, e.g. http://127.0.0.1:8101.
    """

    def __init__(self, config: EngineConfig, tokenizer: Tokenizer, model_name: str,
                 prefill_urls: list[str], decode_urls: list[str], poll_interval_s: float = 0.5,
                 max_failures: int | None = None):
        if not prefill_urls or not decode_urls:
            raise ValueError("the router needs at least one prefill and one decode URL")
        self.config = config
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = config.model.max_model_len
        # Structured outputs: the server compiles each constraint here first (off the event loop),
        # so an invalid one is a 400 naming the field before any worker sees it; the workers
        # compile it again for their own matchers (worker.grammar_for).
        self.grammars = GrammarCompiler(tokenizer)
        self.pool = InstancePool(prefill_urls, decode_urls, config.cache.page_size)
        self.poll_interval_s = poll_interval_s
        self.max_failures = max_failures or 2 * (len(prefill_urls) + len(decode_urls)) + 2
        self.metrics = None              # a RouterMetrics, set by create_router_app
        self.warmup_time_s: float | None = None
        self.error: BaseException | None = None
        self._requests: dict[str, tuple[list[asyncio.Task], asyncio.Queue]] = {}
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task | None = None
        self._ready = threading.Event()
        self._started = False
        self._accepting = True
        self._num_requests = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # -- lifecycle (AsyncEngine's) ---------------------------------------------------------

    def start(self, warmup: bool = True, background: bool = False) -> None:
        """Start polling the workers; must be called on the serving event loop. (warmup and
        background are the workers' business: each warms itself up.)"""
        if self._started:
            return
        self._started = True
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0),
                                         limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await self.pool.poll(self._client)
            if self.pool.up("prefill") and self.pool.up("decode"):
                self._ready.set()
            await asyncio.sleep(self.poll_interval_s)

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return (self._started and self._accepting and bool(self.pool.up("prefill"))
                and bool(self.pool.up("decode")))

    @property
    def healthy(self) -> bool:
        return self._started

    @property
    def num_in_flight(self) -> int:
        return len(self._requests)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def shutdown(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        while drain and self._requests and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for request_id in list(self._requests):
            self.abort(request_id)
        if self._poller is not None:
            self._poller.cancel()
        if self._client is not None:
            await self._client.aclose()
        self._ready.set()       # releases a wait_ready that never saw the workers

    # -- requests --------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        decode = self.pool.instances["decode"]
        return EngineStats(
            num_running=sum(i.num_running for i in decode),
            num_waiting=self.pool.queue_length("prefill") + self.pool.queue_length("decode"),
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            kv_transfer_bytes=sum(i.kv_transfer_bytes for i in decode),
            kv_transfers=sum(i.kv_transfers for i in decode))

    async def debug_state(self) -> dict:
        """The whole cluster for the dashboard: each worker's own state feed (one panel per
        worker, named by role and URL), fetched concurrently; a worker that does not answer is
        listed as down. Each worker bounds its own snapshot rate, so many readers here cost the
        workers no more than one reader each."""
        instances = [i for role in ROLES for i in self.pool.instances[role]]
        if self._client is None:
            return {"engines": [], "workers": []}

        async def one(inst: Instance) -> list[dict]:
            try:
                r = await self._client.get(f"{inst.url}/debug/state", timeout=5.0)
                r.raise_for_status()
                return [dict(e, role=f"{inst.role} worker {inst.url}") for e in r.json()["engines"]]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return []

        panels = await asyncio.gather(*(one(i) for i in instances))
        decode = self.pool.instances["decode"]
        return {"engines": [e for p in panels for e in p],
                "workers": [{"role": i.role, "url": i.url, "up": i.up, "shown": bool(p)}
                            for i, p in zip(instances, panels)],
                "kv_transfer": {"transfers": sum(i.kv_transfers for i in decode),
                                "bytes_total": sum(i.kv_transfer_bytes for i in decode),
                                "recent_s": [], "handoffs_queued": 0}}

    def _check(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not self._accepting:
            raise EngineNotReadyError("server is shutting down")
        check_request(prompt_token_ids, params, max_model_len=self.max_model_len,
                      max_num_seqs=self.config.scheduler.max_num_seqs)
        for role in ROLES:
            if not self.pool.up(role):
                raise EngineDeadError(f"no {role} worker is available")

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                       prompt: str | None = None) -> AsyncIterator[SequenceDelta]:
        """Yield the request's deltas (its n sequences interleaved) until all have finished."""
        if request_id in self._requests:
            raise ValueError(f"request_id must be unique, got {request_id!r}")
        self._check(prompt_token_ids, params)
        base_seed = request_seed(params.seed, self.config.seed, self._num_requests)
        self._num_requests += 1
        out: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._run_sequence(
            request_id, i, list(prompt_token_ids), params.replace(n=1),
            sample_seed(base_seed, i), out)) for i in range(params.n)]
        self._requests[request_id] = (tasks, out)
        try:
            num_open = params.n
            while num_open:
                item = await out.get()
                if item is _ABORTED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    num_open -= 1
        finally:
            for task in tasks:
                task.cancel()
            self._requests.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            for task in entry[0]:
                task.cancel()
            entry[1].put_nowait(_ABORTED)

    async def _run_sequence(self, request_id: str, index: int, prompt_ids: list[int],
                            params: SamplingParams, seed: int, out: asyncio.Queue) -> None:
        try:
            await self._drive(request_id, index, prompt_ids, params, seed, out)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - every failure reaches the request's stream
            out.put_nowait(e)

    async def _drive(self, request_id: str, index: int, prompt_ids: list[int], params: SamplingParams,
                     seed: int, out: asyncio.Queue) -> None:
        state = SeqState(request_id="", index=index, prompt_ids=prompt_ids, output_ids=[],
                         params=params, seed=seed)
        self.prompt_tokens_total += len(prompt_ids)
        failures, ticket = 0, None

        def emit(d: SequenceDelta) -> None:
            d.request_id = request_id
            state.output_ids += d.token_ids
            self.generation_tokens_total += len(d.token_ids)
            out.put_nowait(d)

        while True:
            state.request_id = f"{request_id}-{index}-{failures}"
            try:
                if ticket is None:
                    if not self.pool.up("decode"):
                        raise EngineDeadError("no decode worker is available")
                    delta, ticket = await self._prefill(state)
                    emit(delta)
                    if delta.finished:
                        return
                prefilled_s = time.monotonic()
                async with contextlib.aclosing(self._decode(state, ticket)) as deltas:
                    async for d in deltas:
                        if prefilled_s is not None and self.metrics is not None:
                            self.metrics.handoff_seconds.observe(time.monotonic() - prefilled_s)
                        prefilled_s = None
                        emit(d)
                        if d.finished:
                            return
                raise _Retry("decode stream ended before the sequence finished")
            except _Retry as e:
                failures += 1
                log.warning("sequence %s-%d: %s (failure %d; %d tokens so far)", request_id, index,
                            e, failures, len(state.output_ids))
                if failures >= self.max_failures:
                    raise EngineDeadError(f"giving up after {failures} failed attempts: {e}") from None
                await self._release(ticket)
                ticket = None
                await asyncio.sleep(0.05 * min(failures, 10))

    async def _prefill(self, state: SeqState) -> tuple[SequenceDelta, dict | None]:
        inst, by_prefix = self.pool.pick_prefill(state.all_ids)
        if by_prefix and self.metrics is not None:
            self.metrics.prefix_routed.inc()
        inst.in_flight += 1
        try:
            r = await self._client.post(f"{inst.url}/prefill", json=state.to_json())
            self._check_status(inst, r)
            body = r.json()
        except httpx.TransportError as e:
            self._failed(inst, e)
        finally:
            inst.in_flight -= 1
        self.pool.record_prefix(state.all_ids, inst)
        return delta_from_json(body["delta"], ""), body.get("ticket")

    async def _decode(self, state: SeqState, ticket: dict | None) -> AsyncIterator[SequenceDelta]:
        inst = self.pool.pick("decode")
        inst.in_flight += 1
        try:
            body = {"state": state.to_json(), "ticket": ticket}
            async with self._client.stream("POST", f"{inst.url}/decode", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                self._check_status(inst, r)
                async for line in r.aiter_lines():
                    if line:
                        yield delta_from_json(json.loads(line), "")
        except httpx.TransportError as e:
            self._failed(inst, e)
        finally:
            inst.in_flight -= 1

    def _failed(self, inst: Instance, e: Exception) -> None:
        self.pool.mark_down(inst)
        if self.metrics is not None:
            self.metrics.failovers.labels(inst.role).inc()
        raise _Retry(f"{inst.role} worker {inst.url}: {type(e).__name__}: {e}") from None

    def _check_status(self, inst: Instance, r: httpx.Response) -> None:
        if r.status_code == 200:
            return
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        if r.status_code == 400:
            raise ValueError(message)
        if r.status_code == 429 and len(self.pool.up(inst.role)) == 1:
            raise EngineOverloadedError(message)
        if r.status_code == 503:
            self.pool.mark_down(inst)
        if self.metrics is not None:
            self.metrics.failovers.labels(inst.role).inc()
        raise _Retry(f"{inst.role} worker {inst.url} answered {r.status_code}: {message}")

    async def _release(self, ticket: dict | None) -> None:
        if ticket and ticket.get("release_url"):
            try:
                await self._client.post(ticket["release_url"], json={"uuid": ticket["uuid"]}, timeout=2.0)
            except httpx.HTTPError:
                pass        # it expires on the prefill worker anyway


def load_tokenizer(config: EngineConfig) -> tuple[Tokenizer, str]:
    """The served model's tokenizer and name, without loading weights (or JAX)."""
    from jaxserve.model.source import KNOWN_MODELS, resolve_model_source

    source = config.model.source
    if source == "tiny-random":     # jaxserve.loading.TINY_RANDOM: SmolLM2's tokenizer
        path, name = resolve_model_source(next(iter(KNOWN_MODELS))), source
    else:
        path = resolve_model_source(source)
        name = source if source in KNOWN_MODELS else path.stem
    tokenizer = Tokenizer.from_gguf(path) if path.suffix == ".gguf" else Tokenizer.from_hf_dir(path)
    return tokenizer, config.model.served_model_name or name


def create_router_app(router: Router, config: EngineConfig, start_time_s: float | None = None):
    """jaxserve.server's OpenAI app over the router, plus the router's own metrics."""
    from jaxserve.disagg.metrics import RouterMetrics
    from jaxserve.server import create_app

    app = create_app(router, config, start_time_s=start_time_s)
    router.metrics = RouterMetrics(app.state.metrics.registry, router.pool)
    return app
