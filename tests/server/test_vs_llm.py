"""Greedy text through the HTTP server equals `LLM.generate`'s for the same prompt (real engine).

The default run uses the session's tiny-random server; the SmolLM2 comparison loads the real
135M model twice and compiles on CPU, so it is marked heavy (run with `-m heavy`).
"""
from __future__ import annotations

from pathlib import Path

import openai
import pytest
from conftest import REAL_AVAILABLE, live_server, real_config

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
def test_greedy_server_text_equals_llm_generate(server):
    if server.kind != "real":
        pytest.skip("compares against the real engine's LLM API")
    from jaxserve.llm import LLM
    _compare(server.url, server.model, LLM(real_config()), max_tokens=12)


@pytest.mark.heavy
@pytest.mark.skipif(not (REAL_AVAILABLE and SMOLLM_CONFIG.exists()), reason="real engine not available")
def test_smollm_greedy_server_text_equals_llm_generate():
    from jaxserve.engine import Engine
    from jaxserve.llm import LLM
    config = load_config(SMOLLM_CONFIG, {"server": {"warmup": False},
                                         "scheduler": {"max_num_seqs": 4, "decode_buckets": [1, 2, 4]}})
    llm = LLM(config)
    with live_server(Engine.from_config(config), config, "real") as live:
        _compare(live.url, live.model, llm, max_tokens=8)
