"""The orbax cache of converted params gives back the same arch, family fields included."""
from __future__ import annotations

import logging

import numpy as np

from jaxserve.model.weights import load_checkpoint

from .hf_models import FAMILIES, SMALL


def test_cache_round_trip_keeps_rope_scaling_and_window(tmp_path, caplog):
    import torch
    import transformers

    torch.manual_seed(0)
    source = tmp_path / "model"
    config = transformers.MistralConfig(vocab_size=128, **{**SMALL, **FAMILIES["mistral"].config},
                                        rope_scaling=dict(rope_type="linear", factor=2.0))
    transformers.MistralForCausalLM(config).save_pretrained(source, safe_serialization=True)
    arch, params = load_checkpoint(source, "float32", tmp_path / "cache")
    assert any((tmp_path / "cache").glob("*/arch.json"))   # one entry directory per source
    with caplog.at_level(logging.INFO, logger="jaxserve.model.weights"):
        again, cached = load_checkpoint(source, "float32", tmp_path / "cache")
    assert "restored converted params" in caplog.text
    assert again == arch
    assert (arch.sliding_window, arch.rope_scaling.rope_type, arch.rope_scaling.factor) == (8, "linear", 2.0)
    np.testing.assert_array_equal(np.asarray(cached["layers"]["wq"]["kernel"]),
                                  params["layers"]["wq"]["kernel"])
