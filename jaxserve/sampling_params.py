"""SamplingParams: what a caller may ask of one generation, validated at the door.

Every check raises ValueError naming the field, so the HTTP layer can answer 400 with
`param` set and the Python API shows the caller exactly what was wrong.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from jaxserve.structured import StructuredOutput

# Bounds checked at admission, so no request can hold a value the engine's arrays cannot.
MAX_N = 128                    # samples per request (the scheduler also caps n by max_num_seqs)
MAX_TEMPERATURE = 1e4          # past this, logits / T is ~0 in float32 anyway: a uniform draw
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 1e-3, 1e3   # logits are divided or multiplied by it
MAX_STOP_STRINGS, MAX_STOP_CHARS = 64, 1024   # every new token is checked against every stop string
MAX_STOP_TOKEN_IDS = 1024
_F32_MAX = 3.4028234663852886e38
_I32_LIMIT = 2 ** 31


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) cut to about `limit` characters: error messages never echo a whole input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(kw_only=True)
class SamplingParams:
    """Per-request decoding settings (the OpenAI / vLLM names).

    temperature 0 means greedy. top_k 0 or -1 disables top-k (a top_k at or past the vocabulary
    size means the same; the engine clamps it); top_p 1 and min_p 0 disable theirs. seed fixes
    the random stream of this request alone: the same seed gives the same output whatever else
    shares the batch. Any integer is a seed; those outside [0, 2**32) are hashed to 32 bits
    (jaxserve/seeds.py), so distinct seeds stay distinct streams.
    """

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's plus top k alternatives
    skip_special_tokens: bool = True
    use_speculation: bool = True  # per-request opt-out of speculative decoding
    structured: StructuredOutput | None = None  # constrain the output (JSON schema, regex, choice, grammar)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self, max_logprobs: int = 20) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}, got {short_repr(getattr(self, name))}")

        for name in ("n", "max_tokens", "top_k"):
            if not _is_int(getattr(self, name)):
                raise bad(name, "must be an integer")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty",
                     "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise bad(name, "must be a number")
            # NaN passes every comparison below, and a value past float32's range becomes inf
            # on the device: refuse both here rather than sample from garbage.
            if not math.isfinite(value) or abs(value) > _F32_MAX:
                raise bad(name, "must be a finite number")
        if not 1 <= self.n <= MAX_N:
            raise bad("n", f"must be in [1, {MAX_N}]")
        if self.max_tokens < 1:
            raise bad("max_tokens", "must be >= 1")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise bad("temperature", f"must be in [0, {MAX_TEMPERATURE}]")
        if self.top_k < -1:
            raise bad("top_k", "must be -1, 0 (disabled) or a positive integer")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise bad("repetition_penalty", f"must be in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", "must be in [-2, 2]")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "must be an integer")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= max_logprobs):
            raise bad("logprobs", f"must be an integer in [0, {max_logprobs}]")
        if not isinstance(self.stop, list) or len(self.stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"must be a list of at most {MAX_STOP_STRINGS} strings")
        if not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in self.stop):
            raise bad("stop", f"must be non-empty strings of at most {MAX_STOP_CHARS} characters")
        if not isinstance(self.stop_token_ids, list) or len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise bad("stop_token_ids", f"must be a list of at most {MAX_STOP_TOKEN_IDS} token ids")
        if not all(_is_int(t) and 0 <= t < _I32_LIMIT for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative token ids")
        if self.structured is not None and not isinstance(self.structured, StructuredOutput):
            raise bad("structured", "must be a jaxserve.StructuredOutput")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)
