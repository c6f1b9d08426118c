"""Write small checkpoints for loader tests: a params pytree -> a Hugging Face directory or a GGUF.

The inverse of jaxserve.model.weights.build_params: Flax kernels [L, in, out] go back to one
[out, in] matrix per layer under Hugging Face names, and for GGUF under llama.cpp names with
q/k rows permuted the way llama.cpp's converter does (the loader undoes that permutation).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxserve.model.arch import ModelArch
from jaxserve.model.weights import _GGUF_TO_HF, _LAYER_MAP


def hf_tensors(arch: ModelArch, params: dict) -> dict[str, np.ndarray]:
    """Flax params -> {Hugging Face name: f32 array in HF layout}."""
    out = {"model.embed_tokens.weight": np.asarray(params["embed"], np.float32),
           "model.norm.weight": np.asarray(params["final_norm"]["scale"], np.float32)}
    if "lm_head" in params:
        out["lm_head.weight"] = np.asarray(params["lm_head"], np.float32)
    for suffix, (module, name, transpose) in _LAYER_MAP.items():
        if name not in params["layers"].get(module, {}):
            continue
        stacked = np.asarray(params["layers"][module][name], np.float32)   # [L, ...]
        for i in range(arch.num_layers):
            out[f"model.layers.{i}.{suffix}"] = stacked[i].T if transpose else stacked[i]
    return out


def write_hf_dir(path: Path, arch: ModelArch, params: dict, dtype=np.float32) -> Path:
    """A directory with config.json and model.safetensors holding the tensors in `dtype`."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
              "intermediate_size": arch.intermediate_size, "num_hidden_layers": arch.num_layers,
              "num_attention_heads": arch.num_heads, "num_key_value_heads": arch.num_kv_heads,
              "head_dim": arch.head_dim, "rope_theta": arch.rope_theta, "rms_norm_eps": arch.rms_norm_eps,
              "max_position_embeddings": arch.max_position, "tie_word_embeddings": arch.tie_word_embeddings}
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in hf_tensors(arch, params).items()},
              str(path / "model.safetensors"))
    return path


def _permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert-time q/k row permutation (rotate-half -> interleaved RoPE)."""
    out_dim, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, *rest).swapaxes(1, 2).reshape(out_dim, *rest)


def write_gguf(path: Path, arch: ModelArch, params: dict) -> Path:
    """A llama-architecture F32 GGUF with no tokenizer (enough for a draft model)."""
    from gguf import GGUFWriter

    hf_to_gguf = {h: g for g, h in _GGUF_TO_HF.items()}
    w = GGUFWriter(str(path), "llama")
    w.add_vocab_size(arch.vocab_size)
    w.add_embedding_length(arch.hidden_size)
    w.add_feed_forward_length(arch.intermediate_size)
    w.add_block_count(arch.num_layers)
    w.add_head_count(arch.num_heads)
    w.add_head_count_kv(arch.num_kv_heads)
    w.add_key_length(arch.head_dim)
    w.add_rope_freq_base(arch.rope_theta)
    w.add_layer_norm_rms_eps(arch.rms_norm_eps)
    w.add_context_length(arch.max_position)
    for name, t in hf_tensors(arch, params).items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, i, suffix = name.split(".", 3)
            gname = f"blk.{i}.{hf_to_gguf[suffix]}"
        if gname.endswith("attn_q.weight"):
            t = _permute_qk(t, arch.num_heads)
        elif gname.endswith("attn_k.weight"):
            t = _permute_qk(t, arch.num_kv_heads)
        w.add_tensor(gname, np.ascontiguousarray(t, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
