"""Hugging Face checkpoints as they are published: float16, bfloat16, and sharded with an index.

A random Qwen2 (hf_models.FAMILIES, norms and biases redrawn) is written by transformers' own
save_pretrained three ways: cast to float16, cast to bfloat16, and in float32 cut into shards
(`max_shard_size`, so `model.safetensors.index.json` is written). Each directory is served with
`LLM(model=DIR)` in float32 and compared with transformers reading the same directory back in
float32 (`from_pretrained(DIR, dtype=float32)`), so both run the very weights on disk and any
mis-read bit shows:
  - prompt logits at every position of a 40-token prompt within LOGIT_ATOL;
  - greedy tokens equal to transformers' up to its first near-tie, at least MIN_COMPARED of them.
The loader's own bf16 reading without torch is tested in test_weights.py.
"""
from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.model.param_map import CheckpointError
from jaxserve.model.weights import load_safetensors_dir

from .hf_models import FAMILIES, build_hf_model, hf_greedy, hf_logits, smollm2_tokenizer, write_tokenizer
from .test_families_vs_transformers import LOGIT_ATOL, LONG, MIN_COMPARED, NEAR_TIE, _prefill_logits

pytestmark = pytest.mark.slow      # one small LLM per layout: mostly XLA compiles

NEW_TOKENS = 10
LAYOUTS = {"float16": ("F16", None), "bfloat16": ("BF16", None), "sharded": ("F32", "2MB")}


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def _safetensors_dtypes(path) -> set[str]:
    dtypes = set()
    for f in path.glob("*.safetensors"):
        raw = f.read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return dtypes


@pytest.fixture(scope="module", params=list(LAYOUTS))
def checkpoint(request, tokenizer, tmp_path_factory):
    """(layout, directory, transformers model holding exactly the weights on disk, in float32)."""
    import torch

    layout = request.param
    stored, shard_size = LAYOUTS[layout]
    path = tmp_path_factory.mktemp(layout)
    model = build_hf_model(FAMILIES["qwen2"], tokenizer.vocab_size)
    saved = copy.deepcopy(model).to(getattr(torch, layout)) if stored != "F32" else model
    saved.save_pretrained(path, safe_serialization=True, **({"max_shard_size": shard_size} if shard_size else {}))
    write_tokenizer(tokenizer, path)
    assert _safetensors_dtypes(path) == {stored}
    if shard_size:
        assert (path / "model.safetensors.index.json").exists() and len(list(path.glob("*.safetensors"))) > 2
    # transformers reads the directory back itself, upcasting the stored weights (a cast of the
    # live model would round its RoPE inv_freq buffer too, which no loader does).
    reference = type(model).from_pretrained(path, dtype=torch.float32).eval()
    assert next(reference.parameters()).dtype == torch.float32
    return layout, path, reference


def test_logits_and_greedy_tokens_match_transformers(checkpoint):
    layout, path, reference = checkpoint
    llm = LLM(model=str(path), model__checkpoint_dir=str(path / "params"), model__max_model_len=128,
              cache__page_size=8, cache__num_pages=32, scheduler__max_num_seqs=2,
              scheduler__max_num_batched_tokens=64, scheduler__decode_buckets=[2],
              scheduler__prefill_buckets=[64])
    ids = llm.tokenizer.encode(LONG)
    ours, ref = _prefill_logits(llm, ids), hf_logits(reference, ids)
    print(f"\n{layout}: max |logit diff| {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=LOGIT_ATOL)
    got = llm.generate([LONG], SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0].token_ids
    want, margins = hf_greedy(reference, ids, NEW_TOKENS)
    n = next((i + 1 for i, m in enumerate(margins) if m < NEAR_TIE), NEW_TOKENS)
    assert n >= MIN_COMPARED, f"{layout}: transformers near-tie at token {n}"
    assert got[:n] == want[:n], layout


@pytest.fixture()
def small_sharded(tmp_path):
    """A vocabulary-128 Qwen2 in float32, cut into shards of at most 40 kB (no tokenizer)."""
    build_hf_model(FAMILIES["qwen2"], 128).save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    return tmp_path / "sharded"


def test_a_shard_the_index_names_must_be_there(small_sharded):
    shard = sorted(small_sharded.glob("*.safetensors"))[1]       # not the first: any one will do
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"names shard {shard.name}, which is missing"):
        load_safetensors_dir(small_sharded)


def test_a_tensor_stored_twice_is_refused_by_name(small_sharded):
    """Without an index every *.safetensors is read; one name in two files is an error, not a pick."""
    from safetensors.numpy import load_file, save_file

    (small_sharded / "model.safetensors.index.json").unlink()
    first = min(small_sharded.glob("*.safetensors"))
    name, t = next(iter(load_file(str(first)).items()))
    save_file({name: t}, str(small_sharded / "stray.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor {name} is stored twice"):
        load_safetensors_dir(small_sharded)


def test_sharded_loads_as_the_single_file_does(small_sharded, tmp_path):
    assert len(list(small_sharded.glob("*.safetensors"))) > 2
    build_hf_model(FAMILIES["qwen2"], 128).save_pretrained(tmp_path / "single")
    _, sharded = load_safetensors_dir(small_sharded)
    _, single = load_safetensors_dir(tmp_path / "single")
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_array_equal(a, b)
