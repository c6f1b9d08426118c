"""Router + one prefill + one decode process serve the OpenAI API like the single-process engine.

Greedy (and seeded) text over the router equals LLM.generate on the same config: the KV pages
computed by the prefill process and pulled into the decode process continue the sequence exactly.
"""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from jaxserve import SamplingParams
from tests.disagg._cluster import metric


PROMPTS = ["The disaggregated engine says", "Once upon a time, in a land far away, there lived a"
           " king who had three daughters and a very long list of prompt tokens to fill pages"]


@pytest.fixture(scope="module")
def llm(cluster):
    return cluster.llm


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=f"{cluster.router.url}/v1", api_key="none", timeout=60, max_retries=0)


def test_completions_equal_llm_generate(cluster, client, llm):
    model = client.models.list().data[0].id
    for prompt in PROMPTS:
        ref = llm.generate([prompt], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
                           use_tqdm=False)[0].text
        kwargs = dict(model=model, prompt=prompt, max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
        whole = client.completions.create(**kwargs)
        assert whole.choices[0].text == ref
        assert whole.usage.completion_tokens == 20
        pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kwargs)]
        assert "".join(pieces) == ref


def test_seeded_samples_equal_llm_generate(client, llm):
    # Over HTTP, filters left unset take llama.cpp's defaults; the Python API has none: say them.
    params = SamplingParams(n=2, max_tokens=12, temperature=1.0, top_k=40, top_p=0.95, min_p=0.05,
                            seed=1234, ignore_eos=True)
    ref = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0]
    out = client.completions.create(model="tiny-random", prompt=PROMPTS[0], n=2, max_tokens=12,
                                    temperature=1.0, seed=1234, extra_body={"ignore_eos": True})
    assert sorted(c.text for c in out.choices) == sorted(o.text for o in ref.outputs)


def test_chat_streaming_and_not(client, llm):
    messages = [{"role": "user", "content": "hi there"}]
    ref = llm.chat(messages, SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)[0].text
    chat = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == ref
    stream = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=8,
                                            temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ref


def test_client_disconnect_aborts_on_the_workers(cluster, client):
    def generated() -> float:
        return metric(httpx.get(f"{cluster.decode.url}/metrics").text, "jaxserve:generation_tokens_total")

    before = generated()
    stream = client.completions.create(model="tiny-random", prompt=PROMPTS[0], max_tokens=400,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    for _, _ in zip(range(3), stream):
        pass
    stream.close()
    deadline = time.monotonic() + 10
    while cluster.decode.load()["num_running"]:
        assert time.monotonic() < deadline, "the decode worker kept generating for a gone client"
        time.sleep(0.05)
    assert generated() - before < 399


def test_bad_request_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-random", prompt="x", max_tokens=10_000)


def test_metrics_of_every_process(cluster, client):
    client.completions.create(model="tiny-random", prompt=PROMPTS[1], max_tokens=4)
    router = httpx.get(f"{cluster.router.url}/metrics").text
    prefill = httpx.get(f"{cluster.prefill.url}/metrics").text
    decode = httpx.get(f"{cluster.decode.url}/metrics").text
    for text, role in ((prefill, "prefill"), (decode, "decode")):
        assert metric(text, "jaxserve:kv_transfer_bytes_total") > 0
        assert metric(text, f'jaxserve:kv_transfer_seconds_count{{role="{role}"}}') > 0
        assert metric(text, f'jaxserve:kv_transfer_size_bytes_count{{role="{role}"}}') > 0
        assert f'jaxserve:queue_length{{role="{role}"}}' in text
    assert metric(decode, "jaxserve:kv_transfer_bytes_total") == metric(prefill, "jaxserve:kv_transfer_bytes_total")
    assert metric(router, "jaxserve:router_handoff_seconds_count") > 0
    assert metric(router, 'jaxserve:router_instances_up{role="decode"}') == 1
    assert 'jaxserve:queue_length{role="prefill"}' in router
    assert metric(router, "jaxserve:generation_tokens_total") > 0


def test_router_dashboard_shows_every_worker(cluster, client):
    """The router's state feed is the cluster: one panel per worker (its own feed, named by role
    and URL), with the hand-offs the decode workers counted; each worker serves its own too."""
    client.completions.create(model="tiny-random", prompt=PROMPTS[0], max_tokens=6)
    time.sleep(0.3)   # past each worker's minimum snapshot interval
    state = httpx.get(f"{cluster.router.url}/debug/state", timeout=30).json()
    roles = [e["role"] for e in state["engines"]]
    assert roles == [f"prefill worker {cluster.prefill.url}", f"decode worker {cluster.decode.url}"]
    assert all(w["up"] and w["shown"] for w in state["workers"])
    assert state["kv_transfer"]["transfers"] > 0
    prefill, decode = state["engines"]
    assert decode["finished"] and decode["stats"]["generation_tokens_total"] >= 6
    assert prefill["num_steps"] > 0 and len(prefill["pool"]["cells"]) == prefill["pool"]["num_pages"]
    own = httpx.get(f"{cluster.decode.url}/debug/state", timeout=30).json()
    assert [e["role"] for e in own["engines"]] == ["decode"]
    assert httpx.get(f"{cluster.router.url}/dashboard").status_code == 200
