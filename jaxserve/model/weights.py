"""Checkpoints -> (ModelArch, params pytree): GGUF, Hugging Face safetensors, and an orbax cache.

Both formats are first mapped to Hugging Face tensor names with [out, in] matrices, then one
function stacks the layers into the Flax layout ([in, out] kernels, leading L axis).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from jaxserve.model.arch import ModelArch

log = logging.getLogger(__name__)

# HF suffix within a layer -> (flax module name, flax param name, transpose)
_LAYER_MAP = {
    "input_layernorm.weight": ("attn_norm", "scale", False),
    "self_attn.q_proj.weight": ("wq", "kernel", True),
    "self_attn.k_proj.weight": ("wk", "kernel", True),
    "self_attn.v_proj.weight": ("wv", "kernel", True),
    "self_attn.q_proj.bias": ("wq", "bias", False),
    "self_attn.k_proj.bias": ("wk", "bias", False),
    "self_attn.v_proj.bias": ("wv", "bias", False),
    "self_attn.o_proj.weight": ("wo", "kernel", True),
    "post_attention_layernorm.weight": ("mlp_norm", "scale", False),
    "mlp.gate_proj.weight": ("w_gate", "kernel", True),
    "mlp.up_proj.weight": ("w_up", "kernel", True),
    "mlp.down_proj.weight": ("w_down", "kernel", True),
}

_GGUF_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

SUPPORTED_GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")


def build_params(arch: ModelArch, tensors: Callable[[str], np.ndarray | None], dtype) -> dict:
    """Stack HF-named tensors ([out, in]) into the Flax params pytree."""
    layers: dict[str, dict[str, list]] = {}
    for i in range(arch.num_layers):
        for suffix, (module, name, transpose) in _LAYER_MAP.items():
            t = tensors(f"model.layers.{i}.{suffix}")
            if t is None:
                if name == "bias" and not arch.qkv_bias:
                    continue
                raise ValueError(f"checkpoint lacks model.layers.{i}.{suffix}")
            layers.setdefault(module, {}).setdefault(name, []).append(t.T if transpose else t)
    params = {
        "embed": tensors("model.embed_tokens.weight"),
        "layers": {m: {n: np.stack(v).astype(dtype) for n, v in d.items()} for m, d in layers.items()},
        "final_norm": {"scale": tensors("model.norm.weight")},
    }
    if not arch.tie_word_embeddings:
        params["lm_head"] = tensors("lm_head.weight")
    for key in ("embed", "final_norm"):
        if params[key] is None or (isinstance(params[key], dict) and params[key]["scale"] is None):
            raise ValueError(f"checkpoint lacks {key}")
    params["embed"] = params["embed"].astype(dtype)
    params["final_norm"]["scale"] = params["final_norm"]["scale"].astype(dtype)
    if "lm_head" in params:
        params["lm_head"] = params["lm_head"].astype(dtype)
    return params


# ----------------------------------------------------------------------------------------- GGUF
def _unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time row permutation of q/k (interleaved RoPE -> rotate-half)."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(out_dim, *rest)


def read_gguf_arch(reader) -> ModelArch:
    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    arch_name = field("general.architecture")
    if arch_name not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"unsupported GGUF architecture {arch_name!r} (llama, qwen2, mistral)")
    p = arch_name + "."
    hidden = int(field(p + "embedding_length"))
    heads = int(field(p + "attention.head_count"))
    names = {t.name for t in reader.tensors}
    vocab = field(p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return ModelArch(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(field(p + "feed_forward_length")),
        num_layers=int(field(p + "block_count")), num_heads=heads,
        num_kv_heads=int(field(p + "attention.head_count_kv", heads)),
        head_dim=int(field(p + "attention.key_length", hidden // heads)),
        rope_theta=float(field(p + "rope.freq_base", 10000.0)),
        rms_norm_eps=float(field(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        max_position=int(field(p + "context_length", 8192)),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
    )


def load_gguf(path: str | os.PathLike, dtype=np.float32) -> tuple[ModelArch, dict]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    arch = read_gguf_arch(reader)
    by_name = {t.name: t for t in reader.tensors}
    permute = arch_permutes_qk(reader)

    def tensor(hf_name: str) -> np.ndarray | None:
        gname = _hf_to_gguf(hf_name)
        t = by_name.get(gname)
        if t is None:
            return None
        if t.tensor_type.name not in SUPPORTED_GGUF_TYPES:
            raise ValueError(f"{gname}: GGUF tensor type {t.tensor_type.name} is not supported "
                             f"({', '.join(SUPPORTED_GGUF_TYPES)})")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGUF lists dims innermost first
        if permute and gname.endswith(("attn_q.weight", "attn_q.bias")):
            w = _unpermute_qk(w, arch.num_heads)
        elif permute and gname.endswith(("attn_k.weight", "attn_k.bias")):
            w = _unpermute_qk(w, arch.num_kv_heads)
        return w

    return arch, build_params(arch, tensor, dtype)


def arch_permutes_qk(reader) -> bool:
    """llama.cpp permutes q/k rows for llama-style models only (not qwen2's NeoX rope)."""
    return reader.fields["general.architecture"].contents() in ("llama", "mistral")


def _hf_to_gguf(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, i, suffix = hf_name.split(".", 3)
    for g, h in _GGUF_TO_HF.items():
        if h == suffix:
            return f"blk.{i}.{g}"
    raise KeyError(hf_name)


# ------------------------------------------------------------------------------ safetensors (HF)
def load_safetensors_dir(path: str | os.PathLike, dtype=np.float32) -> tuple[ModelArch, dict]:
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    arch = ModelArch(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rope_theta=float(cfg.get("rope_theta", 10000.0)), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        max_position=cfg.get("max_position_embeddings", 8192),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias", False)),
    )
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(_load_safetensors_f32(f, load_file))
    if not tensors:
        raise ValueError(f"{path}: no *.safetensors files")
    return arch, build_params(arch, tensors.get, dtype)


def _load_safetensors_f32(f: Path, load_file) -> dict[str, np.ndarray]:
    try:
        data = load_file(str(f))
    except TypeError:  # safetensors releases without ml_dtypes support refuse bfloat16
        data = _read_safetensors_raw(f)
    return {k: np.asarray(v, dtype=np.float32) for k, v in data.items()}


_RAW_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read_safetensors_raw(f: Path) -> dict[str, np.ndarray]:
    """The file format read by hand (u64 header size, JSON header, raw bytes); bf16 -> f32, exactly."""
    raw = np.memmap(f, dtype=np.uint8, mode="r")
    header_len = int(raw[:8].view("<u8")[0])
    header = json.loads(bytes(raw[8:8 + header_len]))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _RAW_DTYPES:
            raise ValueError(f"{f}: tensor {name} has dtype {info['dtype']} ({', '.join(_RAW_DTYPES)})")
        begin, end = (8 + header_len + o for o in info["data_offsets"])
        t = raw[begin:end].view(np.dtype(_RAW_DTYPES[info["dtype"]]).newbyteorder("<"))
        if info["dtype"] == "BF16":  # bf16 is the top half of an f32: shift the bits up
            t = (t.astype(np.uint32) << 16).view(np.float32)
        out[name] = t.reshape(info["shape"])
    return out


# ---------------------------------------------------------------------------------- orbax cache
# Bump when conversion changes what it produces (layout, names, dequantization, dtype handling):
# entries saved by another version are then never restored.
CONVERTER_VERSION = 2


def _source_files(source: Path) -> list[Path]:
    """The files whose bytes the conversion reads: a .gguf, or a directory's config and tensors."""
    if source.is_dir():
        return [source / "config.json", *sorted(source.glob("*.safetensors"))]
    return [source]


def cache_entry(source: Path, dtype_name: str, cache_dir: Path) -> Path:
    """The cache directory for one (source, dtype, converter version); holds arch.json and params/.

    The name keeps the source's whole file name for people reading the cache, and a hash of its
    resolved path, every input file's size and mtime, the dtype and CONVERTER_VERSION for uniqueness.
    """
    parts = [str(source.resolve()), dtype_name, f"converter-v{CONVERTER_VERSION}"]
    for f in _source_files(source):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return (cache_dir / f"{source.name}-{dtype_name}-{key}").resolve()


def load_checkpoint(source: Path, dtype_name: str, cache_dir: Path | None) -> tuple[ModelArch, dict]:
    """Load converted params from the orbax cache, or convert and save them there.

    Args:
        source: a .gguf file or a Hugging Face directory (config.json + *.safetensors).
        dtype_name: the params' dtype, e.g. "float32".
        cache_dir: where entries live (see cache_entry); None converts without caching.
    Returns:
        (arch, params pytree).
    """
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype_name)
    loader = load_gguf if source.suffix == ".gguf" else load_safetensors_dir
    if cache_dir is None:
        return loader(source, dtype)
    entry = cache_entry(source, dtype_name, cache_dir)
    ckpt, meta = entry / "params", entry / "arch.json"
    if meta.exists() and ckpt.exists():
        try:
            import orbax.checkpoint as ocp
            arch = ModelArch(**json.loads(meta.read_text()))
            params = ocp.StandardCheckpointer().restore(ckpt)
            log.info("restored converted params from %s", ckpt)
            return arch, params
        except Exception as e:  # a stale or partial cache must never stop a start
            log.warning("ignoring unreadable param cache %s: %s", ckpt, e)
    arch, params = loader(source, dtype)
    try:
        import dataclasses
        import orbax.checkpoint as ocp
        entry.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)     # written last: its presence says params/ is complete
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(ckpt, params, force=True)
        ckptr.wait_until_finished()
        meta.write_text(json.dumps(dataclasses.asdict(arch)))
        log.info("saved converted params to %s", ckpt)
    except Exception as e:
        log.warning("could not cache converted params at %s: %s", ckpt, e)
    return arch, params
