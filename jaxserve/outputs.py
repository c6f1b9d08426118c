"""What the engine hands back: per-step deltas for streaming, and whole results for generate()."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    STOP = "stop"        # EOS, a stop token id or a stop string
    LENGTH = "length"    # max_tokens or the context limit
    ABORT = "abort"      # cancelled by the caller (client disconnect)
    ERROR = "error"      # the engine failed this request; the message says why


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob) alternatives, best first


@dataclass
class SequenceDelta:
    """New output of one sequence (one of a request's n) after one engine step."""

    request_id: str
    index: int                     # which of the request's n samples
    token_ids: list[int]           # tokens accepted this step (several with speculation)
    text: str                      # new, complete UTF-8 text; may be "" while a character is split
    logprobs: list[TokenLogprob] | None
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class RequestMetrics:
    arrival_s: float
    first_token_s: float | None = None
    finished_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def itl_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    metrics: RequestMetrics

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.outputs[0].finish_reason

    @property
    def ttft_s(self) -> float | None:
        return self.metrics.ttft_s

    @property
    def itl_s(self) -> list[float]:
        return self.metrics.itl_s


@dataclass
class EngineStats:
    """A snapshot of the engine's counters and gauges, read by /metrics and benchmarks."""

    num_running: int = 0
    num_waiting: int = 0
    kv_pages_used: int = 0
    kv_pages_total: int = 0
    prefix_cache_queries: int = 0      # prompt pages looked up in the prefix cache
    prefix_cache_hits: int = 0         # of those, pages found and reused
    num_preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    program_count: int = 0             # programs built (compiled, loaded or shared); steady: constant
    compile_count: int = 0             # of those, compiled by XLA in this process
    programs_loaded: int = 0           # of those, deserialized from the executable store
    compile_time_s: float = 0.0        # seconds spent building programs
    programs_pending: int = 0          # still to build in the background after ready
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0
    kv_transfer_bytes: int = 0         # disaggregated: KV bytes moved prefill -> decode
    kv_transfers: int = 0
    grammar_mask_time_s: float = 0.0   # host seconds filling grammar bitmasks (structured outputs)
    grammar_mask_batches: int = 0      # sampler batches that held a constrained row

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_pages_used / self.kv_pages_total if self.kv_pages_total else 0.0
