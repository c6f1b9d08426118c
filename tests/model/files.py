"""Write small checkpoints for loader tests: a params pytree -> a Hugging Face directory or a GGUF.

The inverse of jaxserve.model.weights.build_params: Flax kernels [L, in, out] go back to one
[out, in] matrix per layer under Hugging Face names, and for GGUF under llama.cpp names with
q/k rows permuted the way llama.cpp's converter does (the loader undoes that permutation).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxserve.model.arch import ModelArch
from jaxserve.model.param_map import LLAMA_GGUF, LLAMA_LAYER


def hf_tensors(arch: ModelArch, params: dict) -> dict[str, np.ndarray]:
    """Flax params -> {Hugging Face name: f32 array in HF layout}."""
    out = {"model.embed_tokens.weight": np.asarray(params["embed"], np.float32),
           "model.norm.weight": np.asarray(params["final_norm"]["scale"], np.float32)}
    if "lm_head" in params:
        out["lm_head.weight"] = np.asarray(params["lm_head"], np.float32)
    for suffix, (module, name) in LLAMA_LAYER.items():
        transpose = name == "kernel"   # Flax kernels are [in, out]; HF matrices [out, in]
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
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
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


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, i, suffix = hf_name.split(".", 3)
    return f"blk.{i}.{LLAMA_GGUF[suffix]}"


def write_gguf(path: Path, arch: ModelArch, params: dict, arch_name: str = "llama",
               encode: Callable[[str, np.ndarray], tuple[np.ndarray, Any]] | None = None,
               tokenizer_from: Path | None = None) -> Path:
    """A GGUF of `params`: F32 tensors unless encode(gguf name, array) -> (bytes, GGMLQuantizationType).

    arch_name: llama or mistral (q/k rows permuted as llama.cpp does) or qwen2 (not permuted).
    tokenizer_from: a GGUF whose tokenizer.* fields are copied, so the file can be a model.source.
    """
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    w = GGUFWriter(str(path), arch_name)
    _add_hparams(w, layers=arch.num_layers, context=arch.max_position, hidden=arch.hidden_size,
                 ffn=arch.intermediate_size, heads=arch.num_heads, kv_heads=arch.num_kv_heads,
                 head_dim=arch.head_dim, rope_theta=arch.rope_theta, eps=arch.rms_norm_eps,
                 vocab=arch.vocab_size)
    if tokenizer_from is not None:
        for key, field in GGUFReader(str(tokenizer_from)).fields.items():
            if key.startswith("tokenizer."):
                array = field.types[0] == GGUFValueType.ARRAY
                w.add_key_value(key, field.contents(), field.types[0], field.types[-1] if array else None)
    for name, t in hf_tensors(arch, params).items():
        gname = gguf_name(name)
        if arch_name != "qwen2" and gname.endswith(("attn_q.weight", "attn_q.bias")):
            t = _permute_qk(t, arch.num_heads)
        elif arch_name != "qwen2" and gname.endswith(("attn_k.weight", "attn_k.bias")):
            t = _permute_qk(t, arch.num_kv_heads)
        encoded = encode(gname, t) if encode is not None else None
        if encoded is None:
            w.add_tensor(gname, np.ascontiguousarray(t, np.float32))
        else:
            data, qtype = encoded
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qtype)
    _write_out(w)
    return path


def _add_hparams(w, *, layers, context, hidden, ffn, heads, kv_heads, head_dim, rope_theta, eps,
                 vocab) -> None:
    """The metadata keys every family's GGUF carries (llama.cpp's GGUFWriter names)."""
    w.add_block_count(layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    if rope_theta is not None:          # llama.cpp's gemma2 converter writes none (10,000 implied)
        w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(vocab)


def _write_out(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_hf_model_as_gguf(model, arch_name: str, path: Path, vocab: int, *, rope_theta: float | None,
                           extra: Callable[[Any], None] = lambda writer: None,
                           tensor: Callable[[str, np.ndarray], np.ndarray | None] = lambda name, t: t) -> None:
    """A transformers model -> a GGUF with llama.cpp's metadata keys and tensor names for `arch_name`.

    `extra(writer)` adds family-specific keys; `tensor(hf_name, array)` may rewrite a tensor the
    way llama.cpp's converter does, or return None to leave it out (e.g. a tied lm_head).
    No tokenizer is written: only `vocab` is recorded.
    """
    import gguf

    c = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch_name.upper()), c.num_hidden_layers)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch_name)
    _add_hparams(w, layers=c.num_hidden_layers, context=c.max_position_embeddings, hidden=c.hidden_size,
                 ffn=c.intermediate_size, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                 head_dim=head_dim, rope_theta=rope_theta, eps=c.rms_norm_eps, vocab=vocab)
    extra(w)
    for name, t in model.state_dict().items():
        data = tensor(name, t.float().numpy())
        if data is None:
            continue
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, name
        w.add_tensor(gname, data)
    _write_out(w)
