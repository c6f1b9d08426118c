"""config.json in the transformers 4.x layout (top-level rope_theta / rope_scaling, as most
published checkpoints still have it) reads to the same ModelArch fields as the 5.x layout the
other tests write. The dicts are abridged from the published configs named."""
from __future__ import annotations

import pytest

from jaxserve.model.registry import family_for_hf


def _read(cfg: dict):
    return family_for_hf(cfg["architectures"][0]).read_hf_config(cfg)


def test_llama_3_1_8b_layout():
    arch = _read({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
        "max_position_embeddings": 131072, "tie_word_embeddings": False,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}})
    assert (arch.family, arch.head_dim, arch.rope_theta) == ("llama", 128, 500000.0)
    assert (arch.rope_scaling.rope_type, arch.rope_scaling.original_max_position) == ("llama3", 8192)


def test_qwen2_5_layout_keeps_rope_theta_and_drops_the_unused_window():
    arch = _read({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "vocab_size": 151936, "rope_theta": 1000000.0, "sliding_window": 32768,
        "use_sliding_window": False, "max_window_layers": 21, "tie_word_embeddings": True})
    assert (arch.family, arch.rope_theta, arch.qkv_bias, arch.sliding_window) == ("qwen2", 1e6, True, None)


def test_gemma_3_270m_layout():
    arch = _read({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 640,
        "intermediate_size": 2048, "num_attention_heads": 4, "num_hidden_layers": 18,
        "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
        "sliding_window": 512, "_sliding_window_pattern": 6, "attn_logit_softcapping": None,
        "final_logit_softcapping": None, "rms_norm_eps": 1e-6})
    assert arch.layer_kinds == (("sliding",) * 5 + ("full",)) * 3
    assert (arch.rope_theta, arch.rope_local_theta, arch.rope_scaling) == (1e6, 1e4, None)
    assert (arch.tie_word_embeddings, arch.qk_norm, arch.sliding_window) == (True, True, 512)


def test_gemma_2_without_layer_types_alternates_from_sliding():
    arch = _read({
        "architectures": ["Gemma2ForCausalLM"], "hidden_size": 2304, "intermediate_size": 9216,
        "num_attention_heads": 8, "num_hidden_layers": 4, "num_key_value_heads": 4,
        "head_dim": 256, "vocab_size": 256000, "query_pre_attn_scalar": 256,
        "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh"})
    assert arch.layer_kinds == ("sliding", "full", "sliding", "full")
    assert (arch.attn_soft_cap, arch.final_soft_cap) == (50.0, 30.0)


def test_phi3_longrope_is_refused_by_name():
    with pytest.raises(ValueError, match="longrope"):
        _read({"architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
               "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 32064,
               "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})


def test_gemma_without_query_pre_attn_scalar_is_named():
    with pytest.raises(ValueError, match="lacks 'query_pre_attn_scalar', which the gemma2 family needs"):
        _read({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
               "num_attention_heads": 4, "num_hidden_layers": 2, "head_dim": 16, "vocab_size": 128,
               "sliding_window": 8})
