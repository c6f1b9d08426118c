"""GGUF files of the non-Llama families load to exactly the params of the same weights as a
Hugging Face directory.

The GGUF is written here with gguf-py (llama.cpp's own Python package): tensor names from its
`get_tensor_name_map` for the architecture (the table llama.cpp's converter uses), metadata with
its GGUFWriter keys, F32 tensors. So the name mapping checked is llama.cpp's, not ours; the
safetensors side is checked against transformers in test_families_vs_transformers.py.
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
    c = model.config
    window = getattr(c, "sliding_window", None)
    write_hf_model_as_gguf(model, arch_name, path, VOCAB, rope_theta=c.rope_parameters["rope_theta"],
                           extra=lambda w: window and w.add_sliding_window(window))


@pytest.mark.parametrize("family, arch_name", [("qwen2", "qwen2"), ("qwen3", "qwen3"), ("phi3", "phi3")])
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
