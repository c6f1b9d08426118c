"""Workers SIGKILLed under a router with two prefill and two decode processes.

- a decode worker killed mid-stream: its sequences are prefilled again elsewhere (prompt + tokens
  so far, same seed, a constrained one's grammar replayed) and the client's stream completes
  with exactly the unfaulted text;
- a prefill worker killed while holding requests: they fail over and complete on the other one;
- no decode worker left: a prompt 503 with an OpenAI error body, no hang.
Before any fault, a repeated prompt is routed to the prefill worker whose prefix cache holds it.
Runs last in the session (conftest.py): it kills the shared workers.
"""
from __future__ import annotations

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.disagg._cluster import metric, spawn_router, stop, wait_ready


LONG = 400          # tokens: long enough that the kill lands mid-stream
REGEX = "[a-z]+( [a-z]+)*"   # lowercase words: a constraint that never ends before LONG tokens
PROMPTS = ["Disaggregated serving survives", "A prefill worker fails while",
           "Tokens keep flowing when", "The router retries the prompt"]


@pytest.fixture(scope="module")
def faults(workers, tmp_path_factory):
    router = spawn_router(tmp_path_factory.mktemp("faults"), workers.prefill, workers.decode)
    workers.wait()
    wait_ready([router])
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", timeout=60, max_retries=0)
    yield SimpleNamespace(router=router, prefill=workers.prefill, decode=workers.decode, client=client)
    stop([router])


def _complete(client, prompt: str, max_tokens: int, **kw) -> str:
    return client.completions.create(model="tiny-random", prompt=prompt, max_tokens=max_tokens,
                                     **({"extra_body": {"ignore_eos": True}} | kw)).choices[0].text


def _router_metric(faults, name: str) -> float:
    return metric(httpx.get(f"{faults.router.url}/metrics").text, name)


def test_prefill_routing_follows_the_prefix_cache(faults):
    """Before any fault: a repeated long prompt goes back to the prefill worker caching its pages."""
    def hits() -> float:
        return sum(metric(httpx.get(f"{p.url}/metrics").text, "jaxserve:prefix_cache_hits_total")
                   for p in faults.prefill)

    for i in range(3):
        prompt = f"Request {i}: " + "a shared system prompt that fills several KV pages " * 6
        _complete(faults.client, prompt, 2, temperature=0)
        before = hits()
        _complete(faults.client, prompt, 2, temperature=0)
        assert hits() - before >= 2


def _failovers(faults, role: str) -> float:
    try:
        return _router_metric(faults, f'jaxserve:router_failovers_total{{role="{role}"}}')
    except KeyError:     # the labelled sample appears with the first failover
        return 0.0


def test_prefill_worker_killed(faults):
    refs = [_complete(faults.client, p, 8, temperature=0) for p in PROMPTS]
    before = _failovers(faults, "prefill")
    victim = faults.prefill[0]
    # Frozen, the victim holds every prefill placed on it until it dies: the kill cannot land after
    # them. Eight at once put some there (least-loaded, ties rotated); the router's poller only
    # marks it down once its /load times out (2 s), after these are placed.
    victim.popen.send_signal(signal.SIGSTOP)
    with ThreadPoolExecutor(2 * len(PROMPTS)) as pool:
        futures = [pool.submit(_complete, faults.client, p, 8, temperature=0) for p in PROMPTS * 2]
        time.sleep(0.5)
        victim.kill()
        assert [f.result(timeout=60) for f in futures] == refs * 2
    assert _failovers(faults, "prefill") - before >= 1      # some really were prefilled again
    # Later requests go to the survivor.
    assert [_complete(faults.client, p, 8, temperature=0) for p in PROMPTS] == refs


def _grammar_batches(proc) -> float:
    return metric(httpx.get(f"{proc.url}/metrics").text, "jaxserve:grammar_mask_batches_total")


def test_decode_worker_killed_mid_stream(faults):
    # The last case is constrained: resumed elsewhere, its grammar is replayed over the tokens
    # already streamed, so the whole text still matches (random weights alone never would).
    cases = [dict(temperature=0), dict(temperature=1.0, seed=42),
             dict(temperature=1.0, seed=3, extra_body={"ignore_eos": True, "guided_regex": REGEX})]
    refs = [_complete(faults.client, PROMPTS[0], LONG, **kw) for kw in cases]
    grammar_before = [_grammar_batches(d) for d in faults.decode]
    streams = [faults.client.completions.create(model="tiny-random", prompt=PROMPTS[0], max_tokens=LONG,
                                                stream=True, **({"extra_body": {"ignore_eos": True}} | kw))
               for kw in cases]
    pieces = [[next(iter(s)).choices[0].text] for s in streams]   # the first token: from prefill
    for s, got in zip(streams, pieces):
        while len(got) < 4:                                       # ... then decode is running
            got.append(next(iter(s)).choices[0].text)
    # The victim is the decode worker holding the constrained stream (its mask count moved).
    masked = [d for d, n in zip(faults.decode, grammar_before) if _grammar_batches(d) > n]
    assert masked, "no decode worker applied the constrained stream's grammar"
    masked[0].kill()
    for s, got in zip(streams, pieces):
        got += [c.choices[0].text for c in s]
    assert ["".join(p) for p in pieces] == refs
    assert re.fullmatch(REGEX, refs[-1]) and len(refs[-1]) > 100
    assert _router_metric(faults, 'jaxserve:router_failovers_total{role="decode"}') >= 1


def test_no_worker_of_a_role_left_is_503(faults):
    for d in faults.decode:
        d.kill()
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        _complete(faults.client, PROMPTS[1], 8, temperature=0)
    assert e.value.status_code == 503
    assert time.monotonic() - t0 < 15
    deadline = time.monotonic() + 10
    while httpx.get(f"{faults.router.url}/health").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(openai.APIStatusError) as e:
        faults.client.completions.create(model="tiny-random", prompt=PROMPTS[1], max_tokens=8, stream=True)
    assert e.value.status_code == 503
    r = httpx.post(f"{faults.router.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable_error"
    assert "no decode worker" in r.json()["error"]["message"]
