"""SeqState's JSON round trip keeps every structured-output constraint; malformed ones name the field."""
from __future__ import annotations

import json

import pytest

from jaxserve import SamplingParams
from jaxserve.disagg.worker_api import SeqState
from jaxserve.structured import StructuredOutput


def _state(structured: StructuredOutput | None) -> SeqState:
    return SeqState(request_id="r-0-0", index=0, prompt_ids=[1, 2, 3], output_ids=[4, 5],
                    params=SamplingParams(max_tokens=9, stop=["x"], structured=structured), seed=7)


@pytest.mark.parametrize("structured", [
    None, StructuredOutput(json={"type": "object", "properties": {"a": {"type": "integer"}}}),
    StructuredOutput(json='{"type": "string"}'), StructuredOutput(json_object=True),
    StructuredOutput(regex="[a-z]+"), StructuredOutput(choice=("yes", "no")),
    StructuredOutput(grammar='start: "x"')])
def test_round_trip_keeps_the_constraint(structured):
    wire = json.loads(json.dumps(_state(structured).to_json()))
    back = SeqState.from_json(wire)
    assert back == _state(structured)
    assert back.params.structured == structured


def test_the_wire_shape_is_one_key():
    wire = _state(StructuredOutput(choice=("yes", "no"))).to_json()
    assert wire["params"]["structured"] == {"choice": ["yes", "no"]}


@pytest.mark.parametrize("bad, needle", [
    ([1], "params.structured must be an object"), ({}, "params.structured must be an object"),
    ({"regex": "a", "choice": ["b"]}, "params.structured must be an object"),
    ({"wat": "x"}, "unknown constraint 'wat'"), ({"json": 3}, "params.structured.json"),
    ({"json_object": False}, "params.structured.json_object"), ({"choice": "ab"}, "params.structured.choice"),
    ({"choice": []}, "params.structured.choice"), ({"choice": ["a", 1]}, "params.structured.choice"),
    ({"grammar": None}, "params.structured.grammar"),
    # dataclasses.asdict's shape (what the state carried before it was explicit) is refused too.
    ({"json": None, "json_object": False, "regex": None, "choice": ["a"], "grammar": None},
     "params.structured must be an object")])
def test_malformed_constraint_is_refused_by_name(bad, needle):
    wire = _state(None).to_json()
    wire["params"]["structured"] = bad
    with pytest.raises(ValueError, match="params.structured") as e:
        SeqState.from_json(wire)
    assert needle in str(e.value)
