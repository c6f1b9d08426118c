"""The OpenAI API through the official `openai` client, against the fake and the real engine."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from fake_engine import greedy_text

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
EXACT = {"ignore_eos": True}   # extra_body: always produce max_tokens tokens


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def prompt_ids(server, text: str) -> list[int]:
    return httpx.post(f"{server.url}/tokenize", json={"prompt": text}).json()["tokens"]


def test_health_models_tokenize(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [server.model]
    tok = httpx.post(f"{server.url}/tokenize", json={"prompt": PROMPT}).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"]
    assert PROMPT in text
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": CHAT}).json()
    assert chat["count"] > 0
    assert httpx.get(f"{server.url}/openapi.json").json()["paths"]["/v1/completions"]


def test_completion_greedy_stream_equals_non_stream(server, client):
    full = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=6, temperature=0,
                                     extra_body=EXACT)
    choice = full.choices[0]
    assert choice.finish_reason == "length"
    assert full.usage.prompt_tokens == len(prompt_ids(server, PROMPT))
    assert full.usage.completion_tokens == 6
    assert full.usage.total_tokens == full.usage.prompt_tokens + 6
    if server.kind == "fake":
        assert choice.text == greedy_text(prompt_ids(server, PROMPT), 6)
    chunks = list(client.completions.create(model=server.model, prompt=PROMPT, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body=EXACT))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_chat_stream_equals_non_stream(server, client):
    full = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=5, temperature=0,
                                          extra_body=EXACT)
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 5
    assert full.usage.prompt_tokens == httpx.post(f"{server.url}/tokenize", json={"messages": CHAT}).json()["count"]
    stream = client.chat.completions.create(model=server.model, messages=CHAT, max_completion_tokens=5,
                                            temperature=0, stream=True, extra_body=EXACT)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n2_usage_sums_over_choices(server, client):
    r = client.completions.create(model=server.model, prompt=PROMPT, n=2, max_tokens=4, temperature=1.0,
                                  seed=3, extra_body=EXACT)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens == len(prompt_ids(server, PROMPT))
    chat = client.chat.completions.create(model=server.model, messages=CHAT, n=2, max_tokens=3,
                                          stream=True, stream_options={"include_usage": True}, extra_body=EXACT)
    chunks = list(chat)
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert chunks[-1].usage.completion_tokens == 6


def test_same_seed_same_text_other_seeds_other_text(server, client):
    def sample(seed):
        return client.completions.create(model=server.model, prompt=PROMPT, max_tokens=8, temperature=1.0,
                                         seed=seed, extra_body=EXACT).choices[0].text
    assert sample(1234) == sample(1234)
    assert len({sample(1234), sample(1), sample(2)}) == 3


def test_stop_string_cuts_text(server, client):
    text = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0,
                                     extra_body=EXACT).choices[0].text
    stop = text[3:5]
    if not stop.strip():
        stop = text[6:8]
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0,
                                  stop=[stop, "\x00never"], extra_body=EXACT)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[:text.find(stop)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop, stream=True,
        extra_body=EXACT))
    assert streamed == text[:text.find(stop)]


def test_logprobs(server, client):
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2,
                                  extra_body=EXACT)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    # Greedy: the sampled token is the most likely one.
    assert all(abs(max(top.values()) - x) < 1e-4 for top, x in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=3, temperature=0,
                                          logprobs=True, top_logprobs=3, extra_body=EXACT)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 3 for c in content)
    streamed = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=3, temperature=0,
                                              logprobs=True, stream=True, extra_body=EXACT)
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [c.token for c in content]


async def _stream_one(client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int) -> tuple[str, int, str]:
    stream = await client.completions.create(model=model, prompt=f"{PROMPT} {i}", max_tokens=max_tokens,
                                             temperature=0.8, seed=i, stream=True,
                                             stream_options={"include_usage": True}, extra_body=EXACT)
    text, usage, reason = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage:
            usage = chunk.usage
    return "".join(text), usage.completion_tokens, reason


def test_64_concurrent_streams(server):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                                      timeout=300, http_client=httpx.AsyncClient(
                                          limits=httpx.Limits(max_connections=64), timeout=300)) as client:
            return await asyncio.gather(*(_stream_one(client, server.model, i, 8) for i in range(64)))

    results = asyncio.run(main())
    assert len(results) == 64
    assert all(n == 8 and reason == "length" for _, n, reason in results)
    assert all(text for text, _, _ in results)


def test_sampling_extras_accepted(server, client):
    r = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=5, temperature=0.7, top_p=0.9, seed=1,
        presence_penalty=0.5, frequency_penalty=0.3,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True,
                    "stop_token_ids": [257]})  # the fake BOS: never sampled there
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model=server.model, messages=CHAT, max_completion_tokens=4,
                                          temperature=0.5, extra_body={"top_k": 5, "ignore_eos": True})
    assert chat.usage.completion_tokens == 4
