"""A constrained request shares batches with unconstrained ones without changing their tokens."""
from __future__ import annotations

import json

import jsonschema

from jaxserve import SamplingParams
from jaxserve.structured import StructuredOutput

SCHEMA = {"type": "object", "properties": {"b": {"type": "boolean"},
                                           "n": {"type": "integer", "minimum": 10, "maximum": 20}},
          "required": ["b", "n"], "additionalProperties": False}


def test_a_constrained_request_changes_no_other_output(tiny):
    prompts = ["The cat sat on", "Once upon a time", "1 2 3 4 5"]
    plain = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
             SamplingParams(temperature=1.0, seed=11, max_tokens=12, ignore_eos=True),
             SamplingParams(temperature=0.7, top_k=20, seed=5, max_tokens=12, ignore_eos=True)]
    alone = [o.outputs[0].token_ids for o in tiny.generate(prompts, plain, use_tqdm=False)]
    constrained = SamplingParams(temperature=1.0, seed=2, max_tokens=40,
                                 structured=StructuredOutput(json=SCHEMA))
    before = tiny.engine.stats()
    mixed = tiny.generate(prompts + ["JSON:"], plain + [constrained], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == alone
    assert mixed[3].outputs[0].finish_reason.value == "stop"
    jsonschema.validate(json.loads(mixed[3].outputs[0].text), SCHEMA)
    # The engine's grammar-mask metrics count every step that sampled the constrained row
    # (one per token it generated, at least) and the host time spent packing its masks.
    after = tiny.engine.stats()
    assert (after.grammar_mask_batches - before.grammar_mask_batches
            >= len(mixed[3].outputs[0].token_ids))
    assert after.grammar_mask_time_s > before.grammar_mask_time_s
