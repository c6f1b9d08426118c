"""The Python API as the README shows it, on tiny-random: generate / chat / stream, `__` overrides,
a running event loop (Jupyter), and model files as `model` sources.

The .gguf and Hugging Face directory sources hold tiny-random's own weights and the SmolLM2
tokenizer, so they must give exactly tiny-random's tokens: a loader, layout or tokenizer slip
anywhere on those paths shows as other text.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jax
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.model.arch import tiny_arch
from jaxserve.model.llama import init_random_params
from jaxserve.outputs import FinishReason
from tests.model.files import write_gguf, write_hf_dir

pytestmark = pytest.mark.slow
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-random.yaml"
PROMPTS = ["The capital of France is", "Once upon a time"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
CHAT = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(TINY_CONFIG, scheduler__max_num_seqs=8, cache__page_size=32)


def test_overrides_with_double_underscores(llm):
    assert llm.engine.config.scheduler.max_num_seqs == 8
    assert llm.engine.config.cache.page_size == 32
    with pytest.raises(ValueError, match="scheduler.max_num_seqs"):
        LLM(TINY_CONFIG, scheduler__max_num_seqs=0)


def test_generate_chat_and_stream(llm):
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.prompt for o in outs] == PROMPTS
    for out in outs:
        assert len(out.token_ids) == 12 and out.finish_reason == FinishReason.LENGTH
        assert out.text == llm.tokenizer.decode(out.token_ids) and out.ttft_s > 0
    chat = llm.chat(CHAT, GREEDY, use_tqdm=False)[0]
    prompt = llm.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert chat.text == llm.generate(prompt, GREEDY, use_tqdm=False)[0].text
    sampled = SamplingParams(temperature=1.0, max_tokens=12, seed=1, ignore_eos=True)
    pieces = list(llm.stream(PROMPTS[1], sampled))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate(PROMPTS[1], sampled, use_tqdm=False)[0].text


def test_works_inside_a_running_event_loop(llm):
    """Jupyter runs cells inside an asyncio loop: the blocking API must not need one of its own."""
    async def notebook_cell() -> str:
        asyncio.get_running_loop()
        return llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].text

    assert asyncio.run(notebook_cell()) == llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].text


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, llm, gguf_path) -> dict[str, Path]:
    """tiny-random's weights (seed from the config) as a .gguf and as a Hugging Face directory."""
    tok = llm.tokenizer
    arch = tiny_arch(vocab_size=tok.vocab_size)
    params = init_random_params(arch, jax.random.key(llm.engine.config.seed))
    root = tmp_path_factory.mktemp("tiny-files")
    hf = write_hf_dir(root / "tiny-hf", arch, params)
    tok.backend.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tok.bos_token, "eos_token": tok.eos_token, "add_bos_token": tok.add_bos_token,
        "chat_template": tok.chat_template}))
    return {"gguf": write_gguf(root / "tiny.gguf", arch, params, tokenizer_from=gguf_path), "hf": hf}


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_model_files_as_sources(llm, tiny_files, kind):
    other = LLM(TINY_CONFIG, model=str(tiny_files[kind]))
    assert other.engine.model_name == tiny_files[kind].stem
    want = [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    assert [o.token_ids for o in other.generate(PROMPTS, GREEDY, use_tqdm=False)] == want
    assert other.chat(CHAT, GREEDY, use_tqdm=False)[0].text == llm.chat(CHAT, GREEDY, use_tqdm=False)[0].text
