"""AsyncEngine: the single-threaded Engine, driven from one background thread, served to asyncio.

The Engine is not thread-safe, so exactly one thread (the "engine thread") ever calls it. The life
of a request:

  1. asyncio, `generate()`: validate the request synchronously (SamplingParams, prompt length,
     the waiting-queue limit) and raise ValueError / EngineOverloadedError at once; then put an
     ("add", ...) command on the inbox, wake the engine thread, and await its acknowledgement
     (a concurrent Future), so errors raised by `engine.add_request` reach the caller too.
  2. engine thread, `_run()`: drain the inbox (adds and aborts, in arrival order), call
     `engine.step()` while there is work, and sleep on a condition when there is none.
  3. engine thread: after each step, group the SequenceDeltas by the event loop of their request
     and hand them over with ONE `loop.call_soon_threadsafe` per loop; refresh the stats snapshot.
  4. asyncio: each request owns an asyncio.Queue; `generate()` yields its deltas until all n
     sequences have finished.
  5. a cancelled or closed generator (client disconnect) enqueues ("abort", id): the engine
     thread frees the request's pages before its next step. A request cancelled while its "add"
     still waits in the inbox (the engine thread is busy in a step) has a cancelled ack; the
     engine thread then skips the add instead of setting that ack (which would raise and kill it).

A request whose own values make `engine.add_request` raise fails alone (RequestFailedError);
failures inside a step are isolated per request by the Engine itself. If the engine thread dies
anyway (the model step failed: not any one request's doing), every pending request receives
EngineDeadError (no request ever hangs), `error` is set and `healthy` turns False: /health
reports 503, and `jaxserve serve` exits non-zero so that a supervisor restarts it.
`shutdown(drain=True)` refuses new requests, waits for those in flight, then stops the thread.
"""
from __future__ import annotations

import asyncio
import dataclasses
import concurrent.futures
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from jaxserve.admission import check_request
from jaxserve.errors import (EngineDeadError, EngineNotReadyError, EngineOverloadedError, QueueFull,
                             RequestFailedError)
from jaxserve.interfaces import StepEngine
from jaxserve.outputs import EngineStats, SequenceDelta
from jaxserve.sampling_params import SamplingParams, short_repr

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    """asyncio side of one request: where its deltas go and how many sequences are still open."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    num_open: int                      # sequences (of n) not finished yet; asyncio side only
    finished: bool = False


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None
    stream: _Stream
    ack: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class _Abort:
    request_id: str


class _Refresh:
    """No work: wakes the engine thread to take a new stats snapshot (programs built meanwhile)."""


@dataclass
class _Snapshot:
    """Asks the engine thread, between two steps, for the dashboard's state (engine.debug_state)."""
    result: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


# However many dashboards watch, the engine thread builds at most one state snapshot per this
# many seconds; everyone in between gets the last one (watching must never slow serving).
STATE_MIN_INTERVAL_S = 0.25


_ABORTED = object()   # queue item: the request was aborted from asyncio; its generator ends


class AsyncEngine:
    """Runs `engine.step()` in one background thread and streams deltas to asyncio callers.

    Args:
        engine: any StepEngine (jaxserve.interfaces).
        max_waiting: requests allowed to wait for a slot before new ones are refused;
            None: engine.config.scheduler.max_waiting.
    """

    def __init__(self, engine: StepEngine, max_waiting: int | None = None):
        self.engine = engine
        self.config = engine.config
        self.tokenizer = engine.tokenizer
        self.model_name: str = engine.model_name
        self.max_model_len: int = engine.max_model_len
        self.max_waiting = max_waiting if max_waiting is not None else engine.config.scheduler.max_waiting
        self.grammars = engine.grammars
        self.warmup_time_s: float | None = None   # until ready (the first programs, or all)
        self.programs_pending = 0                  # warm-up tasks left to the background thread
        # Seconds per start phase (load phases from make_engine, then warm-up), also on /metrics.
        self.start_phases: dict[str, float] = dict(getattr(engine, "start_phases", {}))
        self.error: BaseException | None = None

        self._inbox: queue.SimpleQueue[_Add | _Abort | _Refresh | _Snapshot] = queue.SimpleQueue()
        self._wake = threading.Condition()         # guards _inbox puts, _pending_adds, _stop, error
        self._pending_adds = 0                     # adds not yet counted in the stats snapshot
        self._stop = False
        self._streams: dict[str, _Stream] = {}     # asyncio side: requests being generated
        # Engine-thread side: request id -> (stream, sequences not finished yet).
        self._live: dict[str, tuple[_Stream, int]] = {}
        self._stats = EngineStats()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._accepting = True
        # The last snapshot asked of the engine thread: (monotonic time asked, its future).
        self._state_pending: tuple[float, concurrent.futures.Future] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, warmup: bool = True, background: bool = False) -> None:
        """Start the engine thread (idempotent); it warms the engine up first when asked.

        background: report ready once the programs a lone first request needs are built, and
          build the rest on another thread while serving (a step needing one not built yet
          builds it, or waits for the build under way).
        """
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, args=(warmup, background),
                                        name="jaxserve-engine", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until warm-up is over (or the thread died); True when ready."""
        self._ready.wait(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.healthy and self._accepting

    @property
    def healthy(self) -> bool:
        return self.error is None and self._thread is not None and self._thread.is_alive()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def stop_accepting(self) -> None:
        """Refuse new requests from now on (start of a graceful shutdown)."""
        self._accepting = False

    async def shutdown(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Refuse new requests; wait for those in flight when drain, else abort them; stop the thread."""
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        if drain:
            while self._streams and time.monotonic() < deadline and self.healthy:
                await asyncio.sleep(0.02)
        for request_id in list(self._streams):
            self.abort(request_id)
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, max(0.0, deadline - time.monotonic()) + 5.0)

    # -- asyncio API ------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """The snapshot taken by the engine thread after its last step or command."""
        return dataclasses.replace(self._stats, programs_pending=self.programs_pending)

    async def debug_state(self) -> dict[str, Any]:
        """The dashboard's panels: the engine's bounded snapshot (engine_state.py) taken on the
        engine thread between steps, at most one per STATE_MIN_INTERVAL_S however many ask."""
        if not hasattr(self.engine, "debug_state") or not self._ready.is_set() or not self.healthy:
            return {"engines": []}
        now = time.monotonic()
        pending = self._state_pending
        if pending is None or (pending[1].done() and now - pending[0] >= STATE_MIN_INTERVAL_S):
            command = _Snapshot()
            pending = self._state_pending = (now, command.result)
            self._put(command)
        try:
            state = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(pending[1])), 30)
        except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001 - the view says so, serving goes on
            return {"engines": [], "error": f"{type(e).__name__}: {short_repr(str(e), 200)}"}
        # One engine, or a disaggregated pair with its hand-offs ("engines", "kv_transfer").
        return state if "engines" in state else {"engines": [state]}

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Synchronous admission checks; raises ValueError naming the field, or a state error."""
        if self.error is not None:
            raise EngineDeadError(f"engine failed: {self.error!r}")
        if not self._accepting:
            raise EngineNotReadyError("server is shutting down")
        if not self._ready.is_set():
            raise EngineNotReadyError("engine is warming up")
        check_request(prompt_token_ids, params, max_model_len=self.max_model_len,
                      max_num_seqs=self.config.scheduler.max_num_seqs)
        self.engine.validate_request(prompt_token_ids, params)   # fixed facts only: thread-safe
        waiting = self._stats.num_waiting + self._pending_adds
        if waiting >= self.max_waiting:
            raise EngineOverloadedError(
                f"waiting queue is full ({waiting} >= scheduler.max_waiting {self.max_waiting})")

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                       prompt: str | None = None) -> AsyncIterator[SequenceDelta]:
        """Add a request and yield its deltas until all of its n sequences have finished.

        The generator simply ends early if the request is aborted with `abort()`.

        Raises:
            ValueError: bad input (before anything is yielded).
            EngineOverloadedError / EngineNotReadyError: refused at admission.
            EngineDeadError: the engine thread failed, before or during generation.
        """
        if request_id in self._streams:
            raise ValueError(f"request_id must be unique, got {request_id!r}")
        self.check_request(prompt_token_ids, params)
        stream = _Stream(loop=asyncio.get_running_loop(), queue=asyncio.Queue(), num_open=params.n)
        command = _Add(request_id, list(prompt_token_ids), params, prompt, stream)
        self._streams[request_id] = stream
        try:
            self._put(command)
            await asyncio.wrap_future(command.ack)
            while True:
                item = await stream.queue.get()
                if item is _ABORTED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    stream.num_open -= 1
                    if stream.num_open == 0:
                        stream.finished = True
                        return
        finally:
            # Reached on normal end, error, cancellation (client gone) and aclose().
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
            if not stream.finished:
                stream.finished = True
                self._abort_in_engine(request_id)

    def abort(self, request_id: str) -> None:
        """Cancel a request from asyncio: its generator ends and the engine frees its pages."""
        stream = self._streams.pop(request_id, None)
        if stream is not None and not stream.finished:
            stream.finished = True
            self._abort_in_engine(request_id)
            stream.queue.put_nowait(_ABORTED)

    # -- plumbing ---------------------------------------------------------------------------

    def _abort_in_engine(self, request_id: str) -> None:
        try:
            self._put(_Abort(request_id))
        except EngineDeadError:
            pass

    def _put(self, command: _Add | _Abort | _Refresh | _Snapshot) -> None:
        with self._wake:
            # Checked under the lock that _fail_all takes: a command is either refused here or
            # put before the inbox is drained there, so none is left unanswered.
            if self.error is not None:
                raise EngineDeadError(f"engine failed: {self.error!r}")
            self._inbox.put(command)
            if isinstance(command, _Add):
                self._pending_adds += 1
            self._wake.notify()

    def _warm_up(self, background: bool) -> None:
        t0 = time.perf_counter()
        plan = self.engine.warmup_plan()
        now, later = (plan.first, plan.rest) if background else (plan.first + plan.rest, [])
        for task in now:
            task()
        self.warmup_time_s = time.perf_counter() - t0
        self._phase("warmup", self.warmup_time_s)
        if later:
            self.programs_pending = len(later)
            threading.Thread(target=self._build_in_background, args=(later,),
                             name="jaxserve-compile", daemon=True).start()

    def _build_in_background(self, tasks) -> None:
        t0 = time.perf_counter()
        for i, task in enumerate(tasks):
            if self._stop or self.error is not None:
                return
            try:
                task()
            except Exception:  # noqa: BLE001 - the step that needs the program builds it itself
                logger.exception("a background warm-up task failed")
            if i == len(tasks) - 1:   # before pending reads 0, so whoever sees 0 sees the phase
                self._phase("warmup_background", time.perf_counter() - t0)
            self.programs_pending -= 1
            try:
                self._put(_Refresh())
            except EngineDeadError:
                return

    def _phase(self, name: str, seconds: float) -> None:
        self.start_phases[name] = seconds
        logger.info("start phase %s: %.2f s", name, seconds)

    def _run(self, warmup: bool, background: bool) -> None:
        """The engine thread: warm up, then loop over commands and steps until stopped."""
        try:
            if warmup:
                self._warm_up(background)
            self._stats = self.engine.stats()
            self._ready.set()
            while True:
                with self._wake:
                    while not self._stop and self._inbox.empty() and not self.engine.has_unfinished_requests():
                        self._wake.wait()
                    if self._stop:
                        return
                num_added = self._apply_commands()
                self._stats = self.engine.stats()
                with self._wake:
                    # Only now: until the snapshot counts them, check_request counts them here.
                    self._pending_adds -= num_added
                if self.engine.has_unfinished_requests():
                    self._deliver(self.engine.step())
                    self._stats = self.engine.stats()
        except BaseException as e:  # noqa: BLE001 - any failure must reach every waiting request
            logger.exception("engine thread failed")
            self._fail_all(e)
        finally:
            self._ready.set()

    def _apply_commands(self) -> int:
        """Apply queued adds and aborts in arrival order; returns the number of adds taken."""
        num_added = 0
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return num_added
            if isinstance(command, _Refresh):
                continue
            if isinstance(command, _Snapshot):
                if not command.result.set_running_or_notify_cancel():
                    continue
                try:
                    command.result.set_result(self.engine.debug_state())
                except Exception as e:  # noqa: BLE001 - a broken view must not stop serving
                    logger.exception("debug_state failed")
                    command.result.set_exception(e)
                continue
            if isinstance(command, _Abort):
                if self._live.pop(command.request_id, None) is not None:
                    self.engine.abort_request(command.request_id)
                continue
            num_added += 1
            if not command.ack.set_running_or_notify_cancel():
                continue  # its caller left while it sat here: never add it (its _Abort follows)
            try:
                self.engine.add_request(command.request_id, command.prompt_token_ids, command.params,
                                        prompt=command.prompt)
            except ValueError as e:
                command.ack.set_exception(e)
            except QueueFull as e:   # the engine's own queue limit raced past check_request's
                command.ack.set_exception(EngineOverloadedError(str(e)))
            except Exception as e:  # noqa: BLE001 - this request's values broke add_request: it alone fails
                logger.exception("add_request failed for %s", command.request_id)
                self._discard(command.request_id)
                command.ack.set_exception(RequestFailedError(
                    f"request failed: {type(e).__name__}: {short_repr(str(e), 300)}"))
            else:
                self._live[command.request_id] = (command.stream, command.params.n)
                command.ack.set_result(None)

    def _discard(self, request_id: str) -> None:
        """Drop whatever a failed add_request left in the engine (an abort that may find nothing)."""
        try:
            self.engine.abort_request(request_id)
        except Exception:  # noqa: BLE001 - nothing more can be done for it; the engine goes on
            logger.exception("could not clean up request %s", request_id)

    def _deliver(self, deltas: list[SequenceDelta]) -> None:
        """Hand one step's deltas to asyncio: one call_soon_threadsafe per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Any]]] = defaultdict(list)
        for delta in deltas:
            live = self._live.get(delta.request_id)
            if live is None:   # aborted while this step ran
                continue
            stream, num_open = live
            if delta.finished:
                num_open -= 1
                if num_open == 0:
                    del self._live[delta.request_id]
                else:
                    self._live[delta.request_id] = (stream, num_open)
            by_loop[stream.loop].append((stream, delta))
        _send(by_loop)

    def _fail_all(self, error: BaseException) -> None:
        dead = EngineDeadError(f"engine failed: {error!r}")
        with self._wake:
            self.error = error
            commands = []
            while not self._inbox.empty():
                commands.append(self._inbox.get_nowait())
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Any]]] = defaultdict(list)
        for command in commands:
            if isinstance(command, _Add) and not command.ack.done():
                command.ack.set_exception(dead)
            if isinstance(command, _Snapshot) and command.result.set_running_or_notify_cancel():
                command.result.set_exception(dead)
        for stream, _ in self._live.values():
            by_loop[stream.loop].append((stream, dead))
        self._live.clear()
        _send(by_loop)


def _send(by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Any]]]) -> None:
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # that loop is closed: its requests are gone
            pass


def _put_all(items: list[tuple[_Stream, Any]]) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)
