"""Sequence: the host state of one generated sample (a request with n > 1 owns n of them)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from jaxserve.outputs import FinishReason, RequestMetrics, TokenLogprob
from jaxserve.sampling_params import SamplingParams


# An output token sampled on the device whose value the host has not read yet.
UNRESOLVED = -1


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int                          # which of the request's n samples
    prompt_ids: list[int]
    params: SamplingParams
    seed: int                           # this sample's random stream
    metrics: RequestMetrics
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    num_computed: int = 0               # leading tokens whose K/V are in the cache
    pages: list[int] = field(default_factory=list)
    page_keys: list[bytes] = field(default_factory=list)   # prefix-hash chain of full pages
    num_published: int = 0              # leading pages already offered to the prefix cache
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    text: str = ""                      # detokenized output so far (stop strings trimmed)
    held_text: str = ""                 # decoded but not yet emitted: may begin a stop string
    spec_misses: int = 0                # consecutive fully rejected proposals
    spec_skip: int = 0                  # decode steps left before proposing again
    grammar: Any = None                 # structured.GrammarState when the request is constrained
    # Asynchronous scheduling: the last num_unresolved output_ids are UNRESOLVED placeholders for
    # tokens sampled by steps still in flight; the newest is row feed_row of the in-flight step's
    # sampled tokens, which the next step reads on the device (jaxserve/inflight.py).
    num_unresolved: int = 0
    feed_row: int = -1

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_known(self) -> int:
        """Leading tokens whose values the host has (all but the unresolved placeholders)."""
        return self.num_tokens - self.num_unresolved

    @property
    def num_pending(self) -> int:
        """Tokens whose K/V are still to be computed; 1 means the sequence is decoding."""
        return self.num_tokens - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.num_pending == 1

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
