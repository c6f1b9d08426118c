"""Numerics against Hugging Face transformers on the same GGUF file (float32)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

from jaxserve import SamplingParams
from jaxserve.model.attention import ModelBatch

from .conftest import make_llm
from .prompts import PROMPTS

pytestmark = pytest.mark.slow
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    # Our side runs with ignore_eos; let transformers run past EOS too (no EOS suppression either).
    model.generation_config.eos_token_id = None
    return model


def _prefill_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits at every prompt position from our model, via one prefill with all rows selected."""
    T = len(ids)
    S = llm.engine.config.cache.page_size
    pages = -(-T // S)
    table = np.arange(1, pages + 1, dtype=np.int32)[None, :]        # pages 1.. (0 is padding)
    pos = np.arange(T, dtype=np.int32)
    batch = ModelBatch(
        tokens=np.asarray(ids, np.int32), positions=pos, slots=(table[0][pos // S] * S + pos % S),
        block_tables=np.pad(table, ((0, 0), (0, 8 - pages))), kv_lens=np.array([T], np.int32),
        cu_q_lens=np.array([0, T], np.int32), logits_indices=pos, max_q_len=T)
    return llm.engine.runner.logits(batch)


def test_prompt_logits_match(smollm, hf_model):
    worst = 0.0
    for prompt in PROMPTS:
        ids = smollm.tokenizer.encode(prompt)
        ours = _prefill_logits(smollm, ids)
        with torch.no_grad():
            ref = hf_model(torch.tensor([ids])).logits[0].numpy()
        diff = float(np.abs(ours - ref).max())
        worst = max(worst, diff)
        assert (ours.argmax(-1) == ref.argmax(-1)).all(), prompt
    print(f"\nmax |logit - transformers logit| over {len(PROMPTS)} prompts: {worst:.2e}")
    assert worst < 2e-3


def test_greedy_matches_transformers_token_for_token(smollm, hf_model):
    outs = smollm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = smollm.tokenizer.encode(prompt)
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        ref_new = ref[0, len(ids):].tolist()
        assert out.token_ids == ref_new, f"prompt {prompt!r}"



def test_safetensors_directory_gives_the_gguf_tokens(smollm, hf_model, gguf_path, tmp_path):
    """Both doors: SmolLM2 from its GGUF, and the same weights as a directory transformers wrote
    (config.json + safetensors + tokenizer.json), give the same greedy tokens for the same ids."""
    # A GGUF-loaded model refuses save_pretrained (it keeps a gguf quantizer): copy its
    # dequantized weights into a plain model of the same config.
    config = copy.deepcopy(hf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(hf_model)(config)
    plain.load_state_dict(hf_model.state_dict())
    plain.save_pretrained(tmp_path, safe_serialization=True)
    assert list(tmp_path.glob("*.safetensors")), "transformers wrote no safetensors"
    transformers.AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(tmp_path)
    from_dir = make_llm(str(tmp_path))
    ids = [smollm.tokenizer.encode(p) for p in PROMPTS]
    assert from_dir.tokenizer.encode(PROMPTS[0]) == ids[0]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    for prompt, a, b in zip(PROMPTS, smollm.generate(ids, params), from_dir.generate(ids, params)):
        assert a.token_ids == b.token_ids, f"prompt {prompt!r}"
