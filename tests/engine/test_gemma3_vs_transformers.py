"""Gemma 3 270M, real weights: jaxserve against Hugging Face transformers on the same GGUF file.

transformers (5.x) reads this Q4_K_M file itself (`from_pretrained(dir, gguf_file=...)`, which
dequantizes it to float32, like our loader), so both sides run the same weights in float32.
Checked: the tokenizer (transformers' own GGUF Gemma tokenizer), and greedy tokens for six
prompts x 32 new tokens, one of them longer than the 512-token sliding window, each prompt alone
and all of them inside one mixed batch (with sampled requests beside them, a 128-token step
budget so prompts are prefilled in chunks, and the long prompt again as a prefix-cache hit).
Tokens are compared up to the first near-tie of transformers' top two logits (margin below
NEAR_TIE), and at least MIN_COMPARED tokens of every prompt must be compared.

heavy: on a shared 2-core CPU, transformers takes minutes to read the file and build its tokenizer;
the default suite covers the GGUF mapping and the tokenizer rules on small files
(tests/model/test_gemma3_gguf.py).
"""
from __future__ import annotations

import pytest
import torch
import transformers

from jaxserve import SamplingParams

from .conftest import make_llm

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(3600)]   # transformers reads the file for minutes

NEW_TOKENS = 32
NEAR_TIE = 1e-3
MIN_COMPARED = 16
_STORY = ("The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his "
          "father had taught him, and lit the lamp before the fishing boats came home. ")
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "List three primary colors:",
    "import numpy as np\n\n# compute the mean of an array\n",
    _STORY * 20 + "Years later, his daughter",          # ~640 tokens: past the sliding window
]


@pytest.fixture(scope="module")
def hf(gemma3_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gemma3_path.parent), gguf_file=gemma3_path.name, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None      # we run with ignore_eos
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gemma3_path.parent), gguf_file=gemma3_path.name)
    return model, tokenizer


@pytest.fixture(scope="module")
def llm(gemma3_path):
    return make_llm("gemma3-270m-q4_k_m", model__max_model_len=1024, cache__num_pages=512,
                    scheduler__max_num_batched_tokens=128, scheduler__prefill_buckets=[16, 64, 128])


def _reference(model, ids: list[int]) -> tuple[list[int], int]:
    """transformers' greedy tokens and how many of them to compare (up to the first near-tie)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    margins = [float(torch.topk(l[0], 2).values.diff().abs()) for l in out.logits]
    n = next((i + 1 for i, m in enumerate(margins) if m < NEAR_TIE), NEW_TOKENS)
    return tokens, n


@pytest.fixture(scope="module")
def references(hf, llm):
    model, _ = hf
    refs = [_reference(model, llm.tokenizer.encode(p)) for p in PROMPTS]
    for prompt, (_, n) in zip(PROMPTS, refs):
        assert n >= MIN_COMPARED, f"transformers near-tie at token {n} of {prompt[:40]!r}"
    return refs


def test_tokenizer_matches_transformers(hf, llm):
    _, tokenizer = hf
    texts = PROMPTS + ["Hello  world\n\n  x", "<start_of_turn>user\nhi<end_of_turn>\n", "日本語 🤖 123456 é́"]
    for text in texts:
        assert llm.tokenizer.encode(text) == tokenizer(text).input_ids, text[:40]
    assert len(llm.tokenizer.encode(PROMPTS[-1])) > 512


def test_greedy_alone_matches_transformers(llm, references):
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for prompt, (want, n) in zip(PROMPTS, references):
        got = llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].token_ids
        assert got[:n] == want[:n], prompt[:40]


def test_greedy_in_a_mixed_batch_matches_transformers(llm, references):
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    sampled = [SamplingParams(temperature=0.9, top_p=0.9, seed=s, max_tokens=NEW_TOKENS + 8 * s) for s in (1, 2)]
    prompts = PROMPTS + ["Write a poem about the sea.", "Q: Why is the sky blue?\nA:"]
    outs = llm.generate(prompts, [greedy] * len(PROMPTS) + sampled, use_tqdm=False)
    hits_before = llm.engine.stats().prefix_cache_hits
    again = llm.generate([PROMPTS[-1]], greedy, use_tqdm=False)[0].outputs[0].token_ids
    assert llm.engine.stats().prefix_cache_hits > hits_before
    got = [o.outputs[0].token_ids for o in outs[:len(PROMPTS)]] + [again]
    for prompt, tokens, (want, n) in zip(PROMPTS + PROMPTS[-1:], got, references + references[-1:]):
        assert tokens[:n] == want[:n], prompt[:40]
