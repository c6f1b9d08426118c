"""RoPE scaling read from config.json equals transformers' own (modeling_rope_utils), per rope_type.

The frequencies and the cos/sin factor each config gives are compared with transformers'
ROPE_INIT_FUNCTIONS on the same config, in both config layouts (4.x `rope_scaling` at the top
level, as published checkpoints have it; 5.x `rope_parameters`, as save_pretrained writes now).
The decoder side (the factor reaching q and k) is covered on a random Qwen2 checkpoint with yarn
in test_families_vs_transformers.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from jaxserve.model.registry import family_for_hf
from jaxserve.model.rope import rope_attention_factor, rope_frequencies

# Qwen2.5-7B-Instruct with the rope_scaling its model card adds for 128k tokens; head_dim 128.
QWEN2_5 = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
           "num_attention_heads": 28, "num_hidden_layers": 2, "num_key_value_heads": 4,
           "vocab_size": 152064, "rope_theta": 1000000.0, "max_position_embeddings": 32768}

SCALINGS = {
    "qwen2.5 model card": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    "betas, untruncated": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
                           "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False},
    "mscale ratio": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                     "mscale": 1.0, "mscale_all_dim": 0.707},
    "attention_factor given": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                               "attention_factor": 1.5},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
}


def _transformers_rope(cfg: dict):
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.Qwen2Config(**{k: v for k, v in cfg.items() if k != "architectures"})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, None)
    return config, inv_freq.numpy(), float(attention_factor)


@pytest.mark.parametrize("name", list(SCALINGS))
def test_frequencies_and_attention_factor_match_transformers(name):
    cfg = {**QWEN2_5, "rope_scaling": SCALINGS[name]}
    config, want_freq, want_factor = _transformers_rope(cfg)
    saved = {**config.to_dict(), "architectures": ["Qwen2ForCausalLM"]}     # the 5.x layout
    assert "rope_parameters" in saved and not saved.get("rope_scaling")
    for layout in (cfg, saved):
        arch = family_for_hf("Qwen2ForCausalLM").read_hf_config(layout)
        got = rope_frequencies(arch.head_dim, arch.rope_theta, arch.rope_scaling)
        # f32 powers on transformers' side, f64 on ours: a few ulps of f32 apart.
        np.testing.assert_allclose(got, want_freq, rtol=2e-6, atol=0)
        assert rope_attention_factor(arch.rope_scaling) == pytest.approx(want_factor, rel=1e-12)
    if name.startswith(("qwen", "betas", "mscale")):      # the cases must not be vacuous
        default = rope_frequencies(arch.head_dim, arch.rope_theta, None)
        kept, divided = np.isclose(got, default), np.isclose(got, default / arch.rope_scaling.factor)
        assert kept.any() and divided.any() and not (kept | divided).all(), name   # all three bands
        assert want_factor != 1.0
