"""GGUF files of the non-Llama families load to exactly the params of the same weights as a
Hugging Face directory.

The GGUF is written here with gguf-py (llama.cpp's own Python package): tensor names from its
`get_tensor_name_map` for the architecture (the table llama.cpp's converter uses), metadata with
its GGUFWriter keys, F32 tensors. So the name mapping checked is llama.cpp's, not ours; the
safetensors side is checked against transformers in test_families_vs_transformers.py. Qwen2 with
yarn carries the rope scaling keys llama.cpp's Qwen2Model converter writes, and must read to the
same RopeScaling (llama.cpp's default YaRN being transformers' is read off ggml's rope, not run).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxserve.model.weights import load_gguf, load_safetensors_dir

from .files import write_hf_model_as_gguf
from .hf_models import FAMILIES, build_hf_model

VOCAB = 128


def _write_gguf(model, arch_name: str, path) -> None:
    import gguf

    c = model.config
    window = getattr(c, "sliding_window", None)
    rope = c.rope_parameters

    def extra(w) -> None:
        if window:
            w.add_sliding_window(window)
        if rope["rope_type"] == "yarn":           # the three keys llama.cpp's Qwen2Model writes
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(rope["factor"])
            w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])

    write_hf_model_as_gguf(model, arch_name, path, VOCAB, rope_theta=rope["rope_theta"], extra=extra)


@pytest.mark.parametrize("family, arch_name", [("qwen2", "qwen2"), ("qwen2-yarn", "qwen2"),
                                               ("qwen3", "qwen3"), ("phi3", "phi3")])
def test_gguf_loads_to_the_same_params_as_safetensors(family, arch_name, tmp_path):
    model = build_hf_model(FAMILIES[family], VOCAB)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    _write_gguf(model, arch_name, tmp_path / "model.gguf")
    hf_arch, hf_params = load_safetensors_dir(tmp_path / "hf")
    gguf_arch, gguf_params = load_gguf(tmp_path / "model.gguf")
    # GGUF stores the norm epsilon as float32; every other field must agree exactly.
    assert gguf_arch.rms_norm_eps == pytest.approx(hf_arch.rms_norm_eps, rel=1e-6)
    assert dataclasses.replace(gguf_arch, rms_norm_eps=hf_arch.rms_norm_eps) == hf_arch
    flat_hf, flat_gguf = _flatten(hf_params), _flatten(gguf_params)
    assert flat_gguf.keys() == flat_hf.keys()
    for key, value in flat_hf.items():
        np.testing.assert_array_equal(flat_gguf[key], value, err_msg=key)


def _flatten(params) -> dict:
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_gguf_yarn_override_is_refused_by_name(tmp_path):
    """A YaRN key that would move llama.cpp's rope off the defaults we reproduce fails at load."""
    import gguf

    model = build_hf_model(FAMILIES["qwen2-yarn"], VOCAB)
    path = tmp_path / "model.gguf"
    write_hf_model_as_gguf(model, "qwen2", path, VOCAB, rope_theta=1e6, extra=lambda w: (
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN), w.add_rope_scaling_factor(4.0),
        w.add_float32(gguf.Keys.Rope.SCALING_YARN_BETA_FAST.format(arch="qwen2"), 16.0)))
    with pytest.raises(ValueError, match=r"qwen2\.rope\.scaling\.yarn_beta_fast"):
        load_gguf(path)
