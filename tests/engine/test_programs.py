"""Step programs built ahead of time (programs.py), stored on disk (executable_store.py) and
built in the background while serving (AsyncEngine, server.warmup_in_background)."""
from __future__ import annotations

import asyncio
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve import SamplingParams, executable_store, programs
from jaxserve.async_engine import AsyncEngine
from jaxserve.programs import CompileCounter, StepFunction
from jaxserve.sampling_defaults import resolve_defaults

from .conftest import make_llm

# A layout no other test uses (num_pages is in the pools' shape), so the model programs here are
# never shared from an earlier test's engine in this process.
SMALL = dict(model__max_model_len=128, cache__num_pages=44, scheduler__max_num_seqs=4,
             scheduler__decode_buckets=[2, 4], scheduler__max_num_batched_tokens=64,
             scheduler__prefill_buckets=[16, 64])
PROMPTS = ["Once upon a time", "The capital of France is " * 4, "1, 2, 3, 4,", "Hello"]
# Greedy, and seeded with the server's default sampling (the kinds warm-up builds samplers for).
PARAMS = [SamplingParams(max_tokens=6, temperature=0, ignore_eos=True),
          SamplingParams(max_tokens=6, seed=5, ignore_eos=True, **resolve_defaults({}, {}))]


# A constant of this run in the program: JAX's persistent cache (on in the test process) cannot
# hold it from an earlier run, so the first build here really compiles.
_RUN_CONSTANT = float(np.random.default_rng().integers(3, 10**6))


def _step_function(store=None, fingerprint="test") -> tuple[StepFunction, CompileCounter]:
    counter = CompileCounter()
    fn = StepFunction("scale", jax.jit(lambda x: x * _RUN_CONSTANT), lambda a, s: f"scale {a[0].shape}",
                      counter, fingerprint + str(id(counter)), store)
    return fn, counter


def test_concurrent_callers_share_one_build():
    fn, counter = _step_function()
    x = np.arange(6, dtype=np.float32)
    barrier, results = threading.Barrier(4), []

    def call():
        barrier.wait()
        results.append(np.asarray(fn(x)))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.count == counter.compiled == 1, counter.keys
    for r in results:
        np.testing.assert_array_equal(r, x * _RUN_CONSTANT)
    fn(x[:3])                                   # another layout is another program
    assert counter.count == 2


def test_store_round_trip_and_a_corrupt_entry_is_rebuilt(tmp_path):
    store = executable_store.ExecutableStore(tmp_path, "fp-round-trip")
    x = jnp.arange(4, dtype=jnp.float32)
    first, c1 = _step_function(store)
    np.testing.assert_array_equal(first(x), x * _RUN_CONSTANT)
    assert c1.compiled == 1 and len(list(store.dir.glob("*.exe"))) == 1

    programs._shared.clear()                    # as a new process: nothing in memory
    second, c2 = _step_function(store)
    np.testing.assert_array_equal(second(x), x * _RUN_CONSTANT)
    assert (c2.compiled, c2.loaded) == (0, 1)

    programs._shared.clear()
    for f in store.dir.glob("*.exe"):
        f.write_bytes(b"not an executable")
    third, c3 = _step_function(store)
    np.testing.assert_array_equal(third(x), x * _RUN_CONSTANT)
    assert (c3.count, c3.loaded) == (1, 0)   # rebuilt (by XLA, or from JAX's cache), not loaded


def test_fingerprint_follows_what_programs_close_over():
    base = executable_store.fingerprint("arch-a", "opts")
    assert executable_store.fingerprint("arch-a", "opts") == base
    assert executable_store.fingerprint("arch-b", "opts") != base
    a = make_llm("tiny-random", **SMALL).engine.runner._model_step._fingerprint
    b = make_llm("tiny-random", **SMALL, kernel__attention_impl="reference").engine.runner._model_step._fingerprint
    assert a != b


def _reference(llm) -> list[tuple]:
    outs = llm.generate(PROMPTS, [PARAMS[i % 2] for i in range(len(PROMPTS))], use_tqdm=False)
    return [tuple(o.outputs[0].token_ids) for o in outs]


async def _serve(async_engine) -> list[tuple]:
    async def one(i):
        ids = async_engine.tokenizer.encode(PROMPTS[i])
        tokens = []
        async for delta in async_engine.generate(f"r{i}", ids, PARAMS[i % 2]):
            tokens += delta.token_ids
        return tuple(tokens)
    return list(await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))))


def test_requests_needing_programs_not_built_yet_are_served(monkeypatch):
    """Ready after the first programs; the background thread is held back, so four concurrent
    requests need layouts nobody has built (two prefill slots, decode bucket 4): the engine
    thread builds them itself, outputs equal a fully warmed engine's, and the background
    thread, once released, builds the rest without building anything twice."""
    release = threading.Event()
    original = AsyncEngine._build_in_background

    def held_back(self, tasks):
        release.wait(120)
        original(self, tasks)

    monkeypatch.setattr(AsyncEngine, "_build_in_background", held_back)
    llm = make_llm("tiny-random", **SMALL)
    async_engine = AsyncEngine(llm.engine)
    async_engine.start(warmup=True, background=True)
    assert async_engine.wait_ready(300)
    runner = llm.engine.runner
    built_when_ready = runner.compiles.count
    assert async_engine.stats().programs_pending > 0
    got = asyncio.run(_serve(async_engine))
    assert runner.compiles.count > built_when_ready          # the requests needed new programs
    release.set()
    for _ in range(600):
        if async_engine.stats().programs_pending == 0:
            break
        threading.Event().wait(0.5)
    assert async_engine.stats().programs_pending == 0
    assert len(set(runner.compiles.keys)) == len(runner.compiles.keys), runner.compiles.keys   # nothing built twice
    asyncio.run(async_engine.shutdown())

    warm = make_llm("tiny-random", **SMALL)
    warm.engine.warmup()
    assert got == _reference(warm)


@pytest.mark.parametrize("background", [False, True])
def test_after_warm_up_serving_builds_nothing(background):
    llm = make_llm("tiny-random", **SMALL)
    async_engine = AsyncEngine(llm.engine)
    async_engine.start(warmup=True, background=background)
    assert async_engine.wait_ready(300)
    for _ in range(600):
        if async_engine.stats().programs_pending == 0:
            break
        threading.Event().wait(0.5)
    before = llm.engine.runner.compiles.count
    asyncio.run(_serve(async_engine))
    assert llm.engine.runner.compiles.count == before, llm.engine.runner.compiles.keys[before:]
    asyncio.run(async_engine.shutdown())
