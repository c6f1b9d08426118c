"""Shared engines: one real SmolLM2 (float32) and one tiny random model per test session."""
from __future__ import annotations

import pytest

from jaxserve import LLM
from jaxserve.model.source import KNOWN_MODELS

SMOLLM = next(iter(KNOWN_MODELS))


def make_llm(source: str = SMOLLM, **overrides) -> LLM:
    base = dict(model__dtype="float32", model__max_model_len=1024, cache__num_pages=512,
                scheduler__max_num_seqs=32, scheduler__max_num_batched_tokens=256,
                scheduler__decode_buckets=[1, 2, 4, 8, 16, 32],
                scheduler__prefill_buckets=[16, 64, 256])
    base.update(overrides)
    return LLM(model=source, **base)


@pytest.fixture(scope="session")
def smollm(gguf_path) -> LLM:
    return make_llm()


@pytest.fixture(scope="session")
def tiny() -> LLM:
    return make_llm("tiny-random")
