"""Structured outputs through the router: prefill on one process, decode on another, both constrained.

The workers run tiny-random weights, whose unconstrained text is never valid JSON nor one of a
few fixed strings: output that validates can only come from the grammar, on the prefill worker
(first token) and on the decode worker (every later token, after replaying the grammar over the
tokens already emitted). Greedy and seeded outputs also equal LLM.generate in one process.
"""
from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from jaxserve import SamplingParams
from jaxserve.disagg.worker_api import SeqState
from jaxserve.structured import StructuredOutput
from tests.disagg._cluster import metric

SCHEMA = {"type": "object", "properties": {"b": {"type": "boolean"},
                                           "n": {"type": "integer", "minimum": 10, "maximum": 20}},
          "required": ["b", "n"], "additionalProperties": False}
CHOICES = ["a disaggregated router", "the decode worker keeps the grammar", "no"]
PROMPT = "Answer in JSON:"


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=f"{cluster.router.url}/v1", api_key="none", timeout=60, max_retries=0)


def _transfers(cluster) -> float:
    return metric(httpx.get(f"{cluster.decode.url}/metrics").text, "jaxserve:kv_transfer_bytes_total")


def test_json_schema_is_enforced_across_the_handoff(cluster, client):
    before = _transfers(cluster)
    r = client.completions.create(model="tiny-random", prompt=PROMPT, max_tokens=40, temperature=0,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                      "name": "bn", "schema": SCHEMA}}})
    ref = cluster.llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=40,
                                                        structured=StructuredOutput(json=SCHEMA)),
                               use_tqdm=False)[0].outputs[0]
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)
    assert r.choices[0].text == ref.text
    # Several tokens, and the KV pages moved: the decode worker produced all but the first.
    assert r.usage.completion_tokens > 3
    assert _transfers(cluster) > before


def test_seeded_choice_samples_equal_llm_generate(client, cluster):
    # Over HTTP, filters left unset take llama.cpp's defaults; the Python API has none: say them.
    params = SamplingParams(n=4, max_tokens=20, temperature=1.0, top_k=40, top_p=0.95, min_p=0.05,
                            seed=77, structured=StructuredOutput(choice=tuple(CHOICES)))
    ref = cluster.llm.generate(["Pick one:"], params, use_tqdm=False)[0].outputs
    out = client.completions.create(model="tiny-random", prompt="Pick one:", n=4, max_tokens=20,
                                    temperature=1.0, seed=77, extra_body={"structured_outputs": {"choice": CHOICES}})
    texts = [c.text for c in out.choices]
    assert all(t in CHOICES for t in texts), texts
    assert all(c.finish_reason == "stop" for c in out.choices)
    assert sorted(texts) == sorted(o.text for o in ref)


def test_chat_json_object_and_streaming(client):
    stream = client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "JSON please"}], max_tokens=40,
        temperature=0, stream=True, extra_body={"guided_json": SCHEMA})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_forced_tool_call_through_the_router(client):
    tool = {"type": "function", "function": {"name": "set_flag", "parameters": SCHEMA}}
    r = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "go"}],
                                       tools=[tool], tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=64, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "set_flag"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)


def test_invalid_schema_is_refused_by_the_router(client):
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.completions.create(model="tiny-random", prompt="x", max_tokens=4, extra_body={
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}})


# -- a resumed sequence (what the router sends after a worker failure): the grammar is replayed ----

def _state(cluster, output_text: str, structured: StructuredOutput, rid: str) -> dict:
    tok = cluster.llm.tokenizer
    return SeqState(request_id=rid, index=0, prompt_ids=tok.encode("Pick one:"),
                    output_ids=tok.encode(output_text, add_special_tokens=False),
                    params=SamplingParams(max_tokens=30, temperature=0, structured=structured),
                    seed=1).to_json()


def _decode(cluster, state: dict) -> httpx.Response:
    return httpx.post(f"{cluster.decode.url}/decode", json={"state": state, "ticket": None}, timeout=60)


def test_resumed_sequence_continues_under_its_grammar_on_the_decode_worker(cluster):
    r = _decode(cluster, _state(cluster, "the decode", StructuredOutput(choice=tuple(CHOICES)), "resume-d"))
    assert r.status_code == 200, r.text
    deltas = [json.loads(line) for line in r.text.splitlines() if line]
    # Only one choice starts with what was emitted: the grammar forces the rest of it, then EOS.
    assert "".join(d["text"] for d in deltas) == " worker keeps the grammar"
    assert deltas[-1]["finish_reason"] == "stop"


def test_resumed_sequence_is_prefilled_under_its_grammar(cluster):
    state = _state(cluster, '{"b":true,"n":1', StructuredOutput(json=SCHEMA), "resume-p")
    r = httpx.post(f"{cluster.prefill.url}/prefill", json=state, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    if body["ticket"]:
        httpx.post(body["ticket"]["release_url"], json={"uuid": body["ticket"]["uuid"]}, timeout=10)
    # After "n":1 only a digit 0..9 keeps n in [10, 20]: the first token must be one of them.
    assert body["delta"]["text"] and body["delta"]["text"][0].isdigit(), body["delta"]


@pytest.mark.parametrize("structured, needle", [
    ({"choice": []}, "params.structured.choice"),
    ({"json": 3}, "params.structured.json"),
    ({"wat": "x"}, "params.structured"),
    ({"regex": "a", "choice": ["b"]}, "params.structured"),
    ({"json": {"type": "wat"}}, "params.structured.json"),
])
def test_malformed_structured_in_a_seq_state_is_400_naming_it(cluster, structured, needle):
    state = _state(cluster, "", StructuredOutput(choice=("x",)), "bad-structured")
    state["params"]["structured"] = structured
    for url, body in ((f"{cluster.decode.url}/decode", {"state": state, "ticket": None}),
                      (f"{cluster.prefill.url}/prefill", state)):
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400, (url, r.text)
        assert needle in r.json()["error"]["message"], r.text


def test_emitted_tokens_the_grammar_forbids_are_400_naming_output_ids(cluster):
    r = _decode(cluster, _state(cluster, "maybe", StructuredOutput(choice=tuple(CHOICES)), "bad-replay"))
    assert r.status_code == 400
    assert "output_ids[0]" in r.json()["error"]["message"]
