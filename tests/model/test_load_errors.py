"""Bad checkpoints fail at load with an error naming what is wrong, never with a wrong answer."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxserve import LLM
from jaxserve.model.registry import UnsupportedArchitecture
from jaxserve.model.weights import load_safetensors_dir

from .hf_models import FAMILIES, SMALL, write_tokenizer


@pytest.fixture()
def qwen2_dir(tmp_path):
    """A tiny Qwen2 checkpoint (vocabulary 128, no tokenizer): enough for the loader."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=128, **{**SMALL, **FAMILIES["qwen2"].config})
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def _edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(path, edit):
    f = path / "model.safetensors"
    tensors = dict(load_file(str(f)))
    edit(tensors)
    save_file(tensors, str(f))


def test_loads_when_nothing_is_wrong(qwen2_dir):
    arch, params = load_safetensors_dir(qwen2_dir)
    assert (arch.family, arch.qkv_bias, arch.rope_theta) == ("qwen2", True, 1000000.0)
    assert params["layers"]["wq"]["bias"].shape == (2, 64)


def test_unknown_architecture_is_named_with_the_supported_ones(qwen2_dir, tmp_path):
    _edit_config(qwen2_dir, lambda c: c.update(architectures=["GPTNeoXForCausalLM"]))
    from jaxserve.model.source import KNOWN_MODELS, resolve_model_source
    from jaxserve.tokenizer import Tokenizer
    write_tokenizer(Tokenizer.from_gguf(resolve_model_source(next(iter(KNOWN_MODELS)))), qwen2_dir)
    with pytest.raises(UnsupportedArchitecture, match="GPTNeoXForCausalLM.*supported: .*Qwen2ForCausalLM"):
        LLM(model=str(qwen2_dir), model__checkpoint_dir=str(tmp_path / "params"))


def test_missing_tensor_is_named(qwen2_dir):
    _edit_tensors(qwen2_dir, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"lacks tensor model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_safetensors_dir(qwen2_dir)


def test_wrong_shape_is_named_with_both_shapes(qwen2_dir):
    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = np.zeros((100, 64), np.float32)
    _edit_tensors(qwen2_dir, shrink)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight has shape \(100, 64\); "
                                         r"the config implies \(128, 64\)"):
        load_safetensors_dir(qwen2_dir)


def test_unused_tensor_is_named(qwen2_dir):
    """A Llama config over the same tensors: its q/k/v biases would be silently dropped."""
    _edit_config(qwen2_dir, lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"))
    with pytest.raises(ValueError, match=r"not used by this model family.*self_attn\.k_proj\.bias"):
        load_safetensors_dir(qwen2_dir)


def test_missing_config_field_is_named(qwen2_dir):
    _edit_config(qwen2_dir, lambda c: c.pop("num_attention_heads"))
    with pytest.raises(ValueError, match="lacks 'num_attention_heads', which the qwen2 family needs"):
        load_safetensors_dir(qwen2_dir)


@pytest.mark.parametrize("rope_type", ["longrope", "made_up"])
def test_unsupported_rope_type_is_named(qwen2_dir, rope_type):
    _edit_config(qwen2_dir, lambda c: c["rope_parameters"].update(rope_type=rope_type, factor=4.0))
    with pytest.raises(ValueError, match=rf"rope_scaling\.rope_type '{rope_type}' \(supported: .*yarn"):
        load_safetensors_dir(qwen2_dir)


def test_dynamic_ntk_rope_is_refused_by_name_with_the_reason(qwen2_dir):
    """Dynamic NTK's base follows the longest sequence of each forward pass: refused, not
    approximated by the default frequencies it equals only below max_position_embeddings."""
    _edit_config(qwen2_dir, lambda c: c["rope_parameters"].update(rope_type="dynamic", factor=2.0))
    with pytest.raises(ValueError, match=r"rope_scaling\.rope_type 'dynamic' .*longest sequence"):
        load_safetensors_dir(qwen2_dir)


def test_llama3_rope_without_its_parameters_is_named(qwen2_dir):
    _edit_config(qwen2_dir, lambda c: c["rope_parameters"].update(rope_type="llama3", factor=8.0))
    with pytest.raises(ValueError, match="lacks 'low_freq_factor'"):
        load_safetensors_dir(qwen2_dir)
