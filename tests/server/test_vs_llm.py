"""Greedy text through the HTTP server equals `LLM.generate`'s for the same prompt (real engines).

On the session's tiny-random server, and on SmolLM2 with the shipped config: one engine, first
driven by `LLM.generate`, then served over HTTP (a second engine would double the load and
compile time for nothing: the server path is what is under test).
"""
from __future__ import annotations

from pathlib import Path

import openai
import pytest
from conftest import live_server, real_config

from jaxserve.config import load_config
from jaxserve.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
SMOLLM_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smollm2-135m.yaml"


def _compare(url: str, model: str, llm, max_tokens: int) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    expected = [o.text for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    got = [client.completions.create(model=model, prompt=p, max_tokens=max_tokens, temperature=0).choices[0].text
           for p in PROMPTS]
    assert got == expected
    expected_chat = llm.chat(CHAT, greedy, use_tqdm=False)[0].text
    got_chat = client.chat.completions.create(model=model, messages=CHAT, max_tokens=max_tokens,
                                              temperature=0).choices[0].message.content
    assert got_chat == expected_chat


@pytest.mark.slow
def test_greedy_server_text_equals_llm_generate(real_server):
    from jaxserve.llm import LLM
    _compare(real_server.url, real_server.model, LLM(real_config()), max_tokens=12)


@pytest.mark.slow
def test_smollm_greedy_server_text_equals_llm_generate():
    from jaxserve.llm import LLM
    small = {"server": {"warmup": False}, "cache": {"num_pages": 64},
             "scheduler": {"max_num_seqs": 1, "max_num_batched_tokens": 16, "decode_buckets": [1],
                           "prefill_buckets": [16]}}   # one bucket each: two compiles
    config = load_config(SMOLLM_CONFIG, small)
    llm = LLM(config)
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    expected = llm.generate(PROMPTS[0], greedy, use_tqdm=False)[0]
    assert len(expected.token_ids) == 8
    with live_server(llm.engine, config, "real") as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=600)
        got = client.completions.create(model=live.model, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert live.model == "smollm2-135m-instruct-q4_1"
    assert got.choices[0].text == expected.text
    assert got.usage.completion_tokens == 8
