"""Structured outputs and tool calls through the clients users bring: openai, LangChain, raw HTTP.

All on the real tiny engine: its random weights make it a hostile writer of JSON, so what it
returns fits the schema only because the grammar forced it. Strings carry maxLength where the
random model would otherwise never close them; an output cut by max_tokens ("length") cannot
be valid, so only outputs that finished with "stop" are validated, and most must finish so.
"""
from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from jaxserve.server import protocol as p
from jaxserve.server.tool_calls import parse_tool_calls

pytestmark = pytest.mark.slow
USER = [{"role": "user", "content": "Answer in JSON."}]

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["name", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}},
     "required": ["code"], "additionalProperties": False},
    # (format "date" is left out: llguidance admits year 0000, which RFC 3339 allows and Python's
    # date type, behind jsonschema's checker, does not.)
    {"type": "object", "properties": {"day": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}},
     "required": ["day"], "additionalProperties": False},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1},
                                      "n": {"type": "integer", "minimum": 10, "maximum": 20}},
     "required": ["x", "n"], "additionalProperties": False},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}},
     "required": ["v"], "additionalProperties": False},
    {"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                      "required": ["x", "y"], "additionalProperties": False}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
     "required": ["a", "b"], "additionalProperties": False},
    {"type": "object", "properties": {"outer": {"type": "object", "properties": {
        "inner": {"type": "object", "properties": {"z": {"type": "boolean"}}, "required": ["z"],
                  "additionalProperties": False}}, "required": ["inner"], "additionalProperties": False}},
     "required": ["outer"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "why": {"type": "string", "maxLength": 5}},
     "required": ["ok"], "additionalProperties": False},
    {"type": "object", "properties": {"k": {"const": "fixed"}, "m": {"type": "null"}}, "required": ["k", "m"],
     "additionalProperties": False},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"],
     "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"q": {"type": "integer", "exclusiveMinimum": 0}}, "required": ["q"],
        "additionalProperties": False}}}, "required": ["items"], "additionalProperties": False},
    {"type": "object", "properties": {"e": {"type": "string", "enum": ["a", "b"]},
                                      "f": {"oneOf": [{"type": "integer"}, {"type": "null"}]}},
     "required": ["e", "f"], "additionalProperties": False},
    {"type": "object", "properties": {"email": {"type": "string", "format": "email", "maxLength": 20}},
     "required": ["email"], "additionalProperties": False},
]


def _validates(schema: dict, text: str) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(json.loads(text))


@pytest.fixture(scope="module")
def client(real_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="none", max_retries=0, timeout=120)


class Person(BaseModel):
    # Bounded fields: the random model would otherwise write digits or letters until max_tokens.
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=150)
    role: Literal["admin", "user"]


def test_openai_parse_returns_a_parsed_object(client, real_server):
    r = client.chat.completions.parse(model=real_server.model, messages=USER, response_format=Person,
                                      max_tokens=64, seed=1)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.role in ("admin", "user")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_validate(client, real_server, temperature):
    stopped = 0
    for i, schema in enumerate(SCHEMAS):
        r = client.chat.completions.create(
            model=real_server.model, messages=USER, max_tokens=96, temperature=temperature, seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema,
                                                                    "strict": True}})
        choice = r.choices[0]
        if choice.finish_reason == "stop":
            stopped += 1
            _validates(schema, choice.message.content)
    assert stopped >= len(SCHEMAS) * 2 // 3, stopped


def test_json_object_regex_choice_and_vllm_spellings(client, real_server):
    r = client.chat.completions.create(model=real_server.model, messages=USER, max_tokens=64,
                                       response_format={"type": "json_object"}, temperature=1.0, seed=3)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    url = f"{real_server.url}/v1/completions"
    for extra in ({"guided_regex": r"[a-z]{3}-[0-9]{2}"}, {"structured_outputs": {"regex": r"[a-z]{3}-[0-9]{2}"}}):
        out = httpx.post(url, json={"prompt": "id:", "max_tokens": 20} | extra, timeout=60).json()["choices"][0]
        assert out["finish_reason"] == "stop" and re.fullmatch(r"[a-z]{3}-[0-9]{2}", out["text"])
    for extra in ({"guided_choice": ["yes", "no"]}, {"structured_outputs": {"choice": ["yes", "no"]}}):
        out = httpx.post(url, json={"prompt": "ok?", "max_tokens": 20, "temperature": 1.0} | extra,
                         timeout=60).json()["choices"][0]
        assert out["text"] in ("yes", "no")
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 20},
                                               "c": {"enum": ["x", "y"]}},
              "required": ["n", "c"], "additionalProperties": False}   # nothing the random model can run on with
    for extra in ({"guided_json": schema}, {"structured_outputs": {"json": schema}},
                  {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}):
        out = httpx.post(url, json={"prompt": "{", "max_tokens": 40} | extra, timeout=60).json()["choices"][0]
        assert out["finish_reason"] == "stop"
        _validates(schema, out["text"])
    out = httpx.post(url, json={"prompt": "x", "max_tokens": 30, "guided_grammar": 'start: "a" ("b" | "c")+ "."'},
                     timeout=60).json()["choices"][0]
    pattern = r"a[bc]+\." if out["finish_reason"] == "stop" else r"a[bc]*"   # cut by max_tokens: a prefix
    assert re.fullmatch(pattern, out["text"]), out


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                                       "required": ["tz"], "additionalProperties": False}}}
TOOLS = [WEATHER, CLOCK]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_calls_fit_their_schemas(client, real_server, tool_choice, stream):
    kwargs = dict(model=real_server.model, messages=[{"role": "user", "content": "What time is it?"}],
                  tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=96)
    if stream:
        calls, reason = {}, None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for c in chunk.choices:
                reason = c.finish_reason or reason
                for tc in c.delta.tool_calls or []:
                    calls[tc.index] = (tc.function.name, tc.function.arguments)
        calls = list(calls.values())
    else:
        r = client.chat.completions.create(**kwargs)
        reason = r.choices[0].finish_reason
        calls = [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls or []]
        assert r.choices[0].message.content is None
    assert reason == "tool_calls" and len(calls) == 1
    name, arguments = calls[0]
    if isinstance(tool_choice, dict):
        assert name == "get_time"
    jsonschema.validate(json.loads(arguments), SCHEMA_OF[name])


def test_tool_history_is_accepted_and_auto_parses_hermes_blocks(client, real_server):
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 3}'}]
    r = client.chat.completions.create(model=real_server.model, messages=messages, tools=TOOLS, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    tools = [p.ToolDef(**t) for t in TOOLS]
    text = 'Sure.\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, "auto", tools)
    assert content == "Sure." and [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("get_time", {"tz": "UTC"})]
    assert parse_tool_calls('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "auto", tools)[1] == []


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"guided_regex": "(ab"}, "guided_regex"),
    ({"guided_grammar": "start: ("}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_bad_structured_requests_are_400s_naming_the_field(real_server, body, param):
    r = httpx.post(f"{real_server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 4} | body,
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert httpx.get(f"{real_server.url}/health").status_code == 200


def test_langchain_structured_output_and_tools(real_server):
    import langchain_openai
    llm = langchain_openai.ChatOpenAI(base_url=f"{real_server.url}/v1", api_key="none", model=real_server.model,
                                      max_tokens=160, max_retries=0, timeout=120)
    person = llm.with_structured_output(Person).invoke("Describe a person.")
    assert isinstance(person, Person)

    from langchain_core.tools import tool

    @tool
    def get_time(tz: Literal["UTC", "CET"]) -> str:
        """The time in a time zone."""
        return "12:00"

    message = llm.bind_tools([get_time], tool_choice="required").invoke("What time is it?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_time"
    assert message.tool_calls[0]["args"]["tz"] in ("UTC", "CET")
