"""The two contracts the engine's parts meet, written down as Protocols.

StepEngine: driven by one thread, one `step()` at a time, and not thread-safe. Implemented by
  `Engine` (one model), `DisaggregatedEngine` (prefill and decode meshes in one process), the
  disaggregated workers (`PrefillWorker`, `DecodeWorker`: `EngineWorker`s, each wrapping an `Engine`) and the
  tests' `FakeEngine`. `AsyncEngine` drives any of them.

ServingEngine: what the OpenAI server (`jaxserve.server`) calls, from asyncio. Implemented by
  `AsyncEngine` (a StepEngine on a background thread) and `Router` (HTTP to prefill and decode
  workers in other processes).

Errors crossing either contract are the classes of `jaxserve.errors`.
"""
from __future__ import annotations

from typing import AsyncIterator, Protocol

from jaxserve.config import EngineConfig
from jaxserve.outputs import EngineStats, SequenceDelta
from jaxserve.sampling_params import SamplingParams
from jaxserve.structured import GrammarCompiler
from jaxserve.tokenizer import Tokenizer
from jaxserve.warmup import WarmupPlan


class StepEngine(Protocol):
    config: EngineConfig
    tokenizer: Tokenizer
    model_name: str
    max_model_len: int                   # the config's, capped by the model's positions
    grammars: GrammarCompiler | None     # structured outputs (thread-safe); None: not supported

    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError naming the field if the request can never be served. Reads only fixed
        facts (vocabulary, cache size), so other threads may call it."""

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        """Queue a request (its n sequences); QueueFull past scheduler.max_waiting."""

    def abort_request(self, request_id: str) -> list[SequenceDelta]:
        """End a request now; its pages are free when this returns."""

    def step(self) -> list[SequenceDelta]:
        """One scheduling step; the deltas of every sequence that produced output or finished."""

    def has_unfinished_requests(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def warmup(self) -> None:
        """Compile every step shape the config allows, so no request waits for a compile."""

    def warmup_plan(self) -> WarmupPlan:
        """warmup() as tasks: `first` (what a lone first request needs) must run on the thread
        that steps the engine; `rest` only builds programs and may run on another thread."""


class ServingEngine(Protocol):
    config: EngineConfig
    tokenizer: Tokenizer
    model_name: str
    max_model_len: int
    grammars: GrammarCompiler | None
    warmup_time_s: float | None          # None until warm-up has finished
    error: BaseException | None          # set once the engine has failed for good

    def start(self, warmup: bool = True, background: bool = False) -> None:
        """Start serving; warm up first when asked (background: ready after the programs a
        first request needs, the rest built while serving)."""

    def wait_ready(self, timeout: float | None = None) -> bool: ...

    @property
    def ready(self) -> bool:
        """Warm and accepting requests."""

    @property
    def healthy(self) -> bool:
        """False once the engine has failed (the server answers /health with 503)."""

    @property
    def num_in_flight(self) -> int: ...

    def stop_accepting(self) -> None: ...

    async def shutdown(self, drain: bool = True, timeout_s: float = 30.0) -> None: ...

    def stats(self) -> EngineStats: ...

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 prompt: str | None = None) -> AsyncIterator[SequenceDelta]:
        """Yield the request's deltas until all n sequences have finished. Raises ValueError
        (bad input), EngineOverloadedError / EngineNotReadyError (refused), EngineDeadError."""

    def abort(self, request_id: str) -> None:
        """Cancel from asyncio: the request's generator ends and its pages are freed."""
