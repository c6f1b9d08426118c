"""Gemma 2 GGUF, on small files written as llama.cpp's converter writes gemma2.

- A random Gemma 2 (4 layers: two sliding/full pairs, soft caps low enough to bite) saved by
  transformers, and the same weights as a GGUF: gguf-py's tensor-name table for GEMMA2 (the
  sandwich norms post_attention_norm / post_ffw_norm), norms stored as 1 + w, lm_head left out,
  and only the metadata keys convert_hf_to_gguf.py's Gemma2Model writes (soft caps, window, head
  dims; no RoPE base, no layer pattern, no query scale). Both load to the same params and the
  same ModelArch, so the GGUF path inherits the safetensors path's agreement with transformers
  (test_families_vs_transformers.py).
- What llama.cpp hard-codes, read from metadata alone: the 27B's query scale hidden / heads, and
  its defaults for a file without the soft-cap and window keys.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxserve.model.weights import load_gguf, load_safetensors_dir, read_gguf_arch

from .files import write_hf_model_as_gguf
from .hf_models import FAMILIES, FamilySpec, build_hf_model

VOCAB = 128
# FAMILIES["gemma2"] with the query scale a GGUF can express: 1/sqrt(head_dim), as in 2B and 9B.
GEMMA2 = FamilySpec("Gemma2Config", "Gemma2ForCausalLM",
                    {**FAMILIES["gemma2"].config, "query_pre_attn_scalar": 16}, seed=1)


def _write_gemma2_gguf(model, path) -> None:
    c = model.config

    def gemma2_keys(w) -> None:
        w.add_value_length(c.head_dim)
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
        w.add_sliding_window(c.sliding_window)

    def as_llama_cpp_writes(name: str, data: np.ndarray) -> np.ndarray | None:
        if name == "lm_head.weight":           # llama.cpp skips it: Gemma ties it to token_embd
            return None
        return data + 1.0 if name.endswith("norm.weight") else data

    write_hf_model_as_gguf(model, "gemma2", path, VOCAB, rope_theta=None, extra=gemma2_keys,
                           tensor=as_llama_cpp_writes)


def test_gemma2_gguf_loads_to_the_same_params_as_safetensors(tmp_path):
    model = build_hf_model(GEMMA2, VOCAB)
    assert model.config.rope_parameters["rope_theta"] == 10000.0    # what a file without the key means
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    _write_gemma2_gguf(model, tmp_path / "model.gguf")
    hf_arch, hf_params = load_safetensors_dir(tmp_path / "hf")
    gguf_arch, gguf_params = load_gguf(tmp_path / "model.gguf")
    assert gguf_arch.layer_kinds == ("sliding", "full", "sliding", "full")
    assert (gguf_arch.attn_soft_cap, gguf_arch.final_soft_cap, gguf_arch.sliding_window) == (5.0, 30.0, 8)
    assert gguf_arch.rms_norm_eps == pytest.approx(hf_arch.rms_norm_eps, rel=1e-6)
    assert dataclasses.replace(gguf_arch, rms_norm_eps=hf_arch.rms_norm_eps) == hf_arch
    flat = lambda p: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}
    flat_hf, flat_gguf = flat(hf_params), flat(gguf_params)
    assert flat_gguf.keys() == flat_hf.keys()
    assert any("post_mlp_norm" in k for k in flat_hf) and any("post_attn_norm" in k for k in flat_hf)
    for key, value in flat_hf.items():       # the norms: (1 + w) + 0 vs w + 1, one rounding apart
        np.testing.assert_allclose(flat_gguf[key], value, rtol=0, atol=1e-6, err_msg=key)


def _metadata_only_gguf(path, *, layers: int, hidden: int, heads: int, head_dim: int):
    """A gemma2 GGUF with hyperparameters and no tensors: enough for read_gguf_arch."""
    from gguf import GGUFWriter

    from jaxserve.model.gguf_metadata import GGUFFile

    w = GGUFWriter(str(path), "gemma2")
    w.add_block_count(layers)
    w.add_context_length(8192)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(4 * hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(heads // 2)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(VOCAB)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return read_gguf_arch(GGUFFile(path))


def test_gemma2_27b_query_scale_and_llama_cpp_defaults_from_metadata(tmp_path):
    # Gemma 2 27B: 46 layers, hidden 4608, 32 heads of 128: the query scale is 1/sqrt(4608 / 32).
    family, arch = _metadata_only_gguf(tmp_path / "27b.gguf", layers=46, hidden=4608, heads=32, head_dim=128)
    assert family.name == "gemma2"
    assert arch.query_pre_attn_scalar == 144.0
    assert (arch.attn_soft_cap, arch.final_soft_cap, arch.sliding_window) == (50.0, 30.0, 4096)
    assert arch.layer_kinds == ("sliding", "full") * 23
    assert arch.rope_theta == arch.rope_local_theta == 10000.0
    # Gemma 2 2B: 26 layers, hidden 2304, 8 heads of 256: 1/sqrt(head_dim), not hidden / heads (288).
    _, arch = _metadata_only_gguf(tmp_path / "2b.gguf", layers=26, hidden=2304, heads=8, head_dim=256)
    assert arch.query_pre_attn_scalar == 256.0
