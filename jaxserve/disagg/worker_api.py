"""The wire types between router, prefill workers and decode workers (JSON over HTTP). Host only.

    router  --POST /prefill  SeqState------------------------------------>  prefill worker
            <-------------------------  {"delta": Delta, "ticket": Ticket | null}
    router  --POST /decode   {"state": SeqState, "ticket": Ticket | null}->  decode worker
            <-------------------------  NDJSON: one Delta per line, the last one finished
    decode  --POST /release  {"uuid": int}------------------------------->  prefill worker

A SeqState is everything needed to continue one sequence anywhere: its prompt, the tokens already
emitted, its sampling params (with its structured-output constraint, if any, in the explicit shape
of structured_to_json; the receiving worker replays the grammar over the emitted tokens) and its
seed (draws are keyed by (seed, output index), so a sequence continued elsewhere draws exactly
what it would have drawn). A Ticket names staged K/V pages on
a prefill worker's JAX transfer server: the decode worker pulls them by (address, uuid).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jaxserve.outputs import FinishReason, SequenceDelta, TokenLogprob
from jaxserve.sampling_params import SamplingParams, short_repr
from jaxserve.structured import StructuredOutput


@dataclass
class SeqState:
    request_id: str               # unique per attempt on a worker
    index: int                    # which of the request's n samples
    prompt_ids: list[int]
    output_ids: list[int]         # already emitted (non-empty when a sequence is resumed)
    params: SamplingParams
    seed: int                     # u32: this sample's random stream

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def to_json(self) -> dict[str, Any]:
        # asdict would turn the constraint into a dict of all its fields, which SamplingParams
        # refuses on the other side: it travels in its own explicit shape instead.
        params = dataclasses.asdict(dataclasses.replace(self.params, structured=None))
        params["structured"] = structured_to_json(self.params.structured)
        return {"request_id": self.request_id, "index": self.index, "prompt_ids": self.prompt_ids,
                "output_ids": self.output_ids, "params": params, "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SeqState":
        """Raises ValueError (naming the field) on a malformed body."""
        try:
            fields = dict(d["params"])
            fields["structured"] = structured_from_json(fields.get("structured"))
            params = SamplingParams(**fields)
            state = cls(request_id=str(d["request_id"]), index=int(d["index"]),
                        prompt_ids=[int(t) for t in d["prompt_ids"]],
                        output_ids=[int(t) for t in d.get("output_ids", [])], params=params,
                        seed=int(d["seed"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad sequence state: {e!r}") from None
        if params.n != 1:
            raise ValueError(f"n must be 1 on a worker (the router splits samples), got {params.n}")
        return state


def structured_to_json(spec: StructuredOutput | None) -> dict[str, Any] | None:
    """The one constraint as {kind: value}: {"json": schema}, {"json_object": true}, {"regex": str},
    {"choice": [str, ...]} or {"grammar": str}; None when the sequence is unconstrained."""
    if spec is None:
        return None
    value = getattr(spec, spec.kind)
    return {spec.kind: list(value) if spec.kind == "choice" else value}


def structured_from_json(d: Any) -> StructuredOutput | None:
    """structured_to_json's inverse; ValueError naming params.structured on any other shape."""
    if d is None:
        return None
    if not isinstance(d, dict) or len(d) != 1:
        raise ValueError(f"params.structured must be an object with exactly one of {list(_STRUCTURED_KINDS)}, "
                         f"got {short_repr(d)}")
    (kind, value), = d.items()
    check = _STRUCTURED_KINDS.get(kind)
    if check is None:
        raise ValueError(f"params.structured has an unknown constraint {short_repr(kind)}; "
                         f"expected one of {list(_STRUCTURED_KINDS)}")
    if not check(value):
        raise ValueError(f"params.structured.{kind} is malformed, got {short_repr(value)}")
    if kind == "json_object":
        return StructuredOutput(json_object=True)
    try:
        return StructuredOutput(**{kind: tuple(value) if kind == "choice" else value})
    except ValueError as e:
        raise ValueError(f"params.{e}") from None


# What each constraint's value must look like on the wire (StructuredOutput checks the rest).
_STRUCTURED_KINDS = {
    "json": lambda v: isinstance(v, (dict, str)),
    "json_object": lambda v: v is True,
    "regex": lambda v: isinstance(v, str),
    "choice": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    "grammar": lambda v: isinstance(v, str),
}


@dataclass
class Ticket:
    """K/V pages staged on a prefill worker, ready to be pulled once."""
    address: str                          # the prefill worker's transfer server, host:port
    uuid: int
    num_pages: int
    group_shapes: list[list[int]]         # per power-of-two group: [L, g, S, K*D] (K and V alike)
    dtype: str
    nbytes: int
    release_url: str = ""                 # POST {"uuid"} here once pulled

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Ticket":
        try:
            return cls(address=str(d["address"]), uuid=int(d["uuid"]), num_pages=int(d["num_pages"]),
                       group_shapes=[[int(x) for x in s] for s in d["group_shapes"]],
                       dtype=str(d["dtype"]), nbytes=int(d["nbytes"]),
                       release_url=str(d.get("release_url", "")))
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad ticket: {e!r}") from None


def delta_to_json(d: SequenceDelta) -> dict[str, Any]:
    lps = None if d.logprobs is None else [[lp.token_id, lp.logprob, [list(t) for t in lp.top]]
                                           for lp in d.logprobs]
    return {"index": d.index, "token_ids": d.token_ids, "text": d.text, "logprobs": lps,
            "finish_reason": d.finish_reason.value if d.finish_reason else None,
            "num_prompt_tokens": d.num_prompt_tokens, "error": d.error}


def delta_from_json(d: dict[str, Any], request_id: str) -> SequenceDelta:
    lps = None if d.get("logprobs") is None else [
        TokenLogprob(int(t), float(lp), [(int(a), float(b)) for a, b in top]) for t, lp, top in d["logprobs"]]
    reason = d.get("finish_reason")
    return SequenceDelta(request_id=request_id, index=int(d["index"]), token_ids=list(d["token_ids"]),
                         text=d["text"], logprobs=lps,
                         finish_reason=FinishReason(reason) if reason else None,
                         num_prompt_tokens=int(d["num_prompt_tokens"]), error=d.get("error"))


def error_body(status: int, message: str, type: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, used by the workers too, so the router can pass messages on."""
    return {"error": {"message": message, "type": type, "param": None, "code": code or str(status)}}
