"""Checkpoints -> (ModelArch, params pytree): GGUF, Hugging Face safetensors, and an orbax cache.

The architecture named in the checkpoint picks a family from the registry. Both formats are
first mapped to Hugging Face tensor names with [out, in] matrices (GGUF through the family's
llama.cpp names), then the family converts each layer and build_params stacks the layers into
the Flax layout ([in, out] kernels, leading L axis).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from jaxserve.model.arch import ModelArch
from jaxserve.model.families.gguf_config import GGUFMeta
from jaxserve.model.families.hf_config import MissingConfigField
from jaxserve.model.gguf_metadata import GGUFFile
from jaxserve.model.param_map import CheckpointError, CheckpointTensors, LayerTensors
from jaxserve.model.registry import ModelFamily, family_for_gguf, family_for_hf

log = logging.getLogger(__name__)

SUPPORTED_GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")

# Tensors outside the layers, the same in every family: Hugging Face name -> llama.cpp name.
_GLOBAL_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def build_params(family: ModelFamily, arch: ModelArch, tensors: CheckpointTensors, dtype,
                 norm_offset: float = 0.0) -> dict:
    """Convert HF-named tensors ([out, in]) into the Flax params pytree, layers stacked on L.

    Every tensor is checked against the shape the family's module declares, and every tensor of
    the checkpoint must be used: a mismatch raises here, at load, naming the tensor.
    norm_offset is added to every RMSNorm scale (see ModelFamily.hf_norm_offset).
    """
    shapes = family.layer_param_shapes(arch)
    per_layer = [family.convert_layer(LayerTensors(tensors, i, shapes), arch)
                 for i in range(arch.num_layers)]
    layers: dict[str, dict[str, np.ndarray]] = {}
    for module, module_shapes in shapes.items():
        for name in module_shapes:
            if any(name not in layer.get(module, {}) for layer in per_layer):
                raise CheckpointError(f"{tensors.source}: the {family.name} converter gave no "
                                      f"{module}.{name}")
            stacked = np.stack([l[module][name] for l in per_layer])
            if name == "scale":
                stacked = stacked + np.float32(norm_offset)
            layers.setdefault(module, {})[name] = stacked.astype(dtype, copy=False)   # fresh already
    V, E = arch.vocab_size, arch.hidden_size
    final_norm = tensors.take("model.norm.weight", (E,)) + np.float32(norm_offset)
    params = {
        "embed": _owned(tensors.take("model.embed_tokens.weight", (V, E)), dtype),
        "layers": family.arrange_layers(layers, arch),
        "final_norm": {"scale": final_norm.astype(dtype, copy=False)},
    }
    if not arch.tie_word_embeddings:
        params["lm_head"] = _owned(tensors.take("lm_head.weight", (V, E)), dtype)
    elif tensors.has("lm_head.weight"):
        tensors.read.add("lm_head.weight")       # a tied checkpoint that also stores the copy
    tensors.check_all_read()
    return params


def _owned(x: np.ndarray, dtype) -> np.ndarray:
    """x as dtype, copied only where needed: to change the dtype, or where x views a mapped file
    (an F32 GGUF tensor, a raw safetensors one), which params must not keep open."""
    base = x
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base
    return x.astype(dtype, copy=base is not None)


# ----------------------------------------------------------------------------------------- GGUF
def _unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time row permutation of q/k (interleaved RoPE -> rotate-half)."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(out_dim, *rest)


# Dequantizing in rows of about this many values. gguf.quants works through 16 rows per round
# of numpy calls, so SmolLM2's rows of 576 spend more time in call overhead than in arithmetic,
# and whole tensors at once spill out of the caches. Blocks are independent, so regrouping them
# into other rows changes no value. Measured on SmolLM2 (Q4_1, Q8_0) for all its tensors:
# 1.3-1.9 s in its own rows, 1.0-1.2 s in rows of 4096 or 8192, 1.3 s of 2048, 1.9 s of 65536;
# on Gemma 3 270M (Q4_K, Q5_0, Q6_K, Q8_0): 1.8-3.6 s, 1.3-1.5 s.
_DEQUANT_ROW = 4096


def dequantize_f32(t) -> np.ndarray:
    """A GGUFTensor's values as float32 of its numpy shape (reversed(t.shape)); gguf.quants
    does the arithmetic. F32 tensors come back as a view of the file, every other type fresh."""
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    data = t.data
    if data.dtype == np.uint8:      # blocks (quantized, or BF16), not values
        block_size, type_size = GGML_QUANT_SIZES[t.tensor_type]
        n_blocks = t.n_bytes // type_size
        per_row = max(1, min(n_blocks, _DEQUANT_ROW // block_size))
        while n_blocks % per_row:
            per_row -= 1
        data = data.reshape(n_blocks // per_row, per_row * type_size)
    w = dequantize(data, t.tensor_type).astype(np.float32, copy=False)     # float32 already: no copy
    return w.reshape(tuple(reversed(t.shape)))   # GGUF lists dims innermost first


def read_gguf_arch(gguf_file, source: str = "GGUF") -> tuple[ModelFamily, ModelArch]:
    """gguf_file: a GGUFFile (jaxserve.model.gguf_metadata)."""
    meta = GGUFMeta(gguf_file, source)
    family = family_for_gguf(meta.arch_name, source)
    return family, family.read_gguf_config(meta)


def _gguf_to_hf_names(family: ModelFamily, gguf_names) -> dict[str, str]:
    """llama.cpp tensor name -> Hugging Face name; names no rule knows keep a `gguf:` prefix,
    so the unused-tensor check can name them."""
    layer = {g: h for h, g in family.gguf_tensor_names.items()}
    glob = {g: h for h, g in _GLOBAL_GGUF.items()}
    out = {}
    for name in gguf_names:
        parts = name.split(".", 2)
        if name in glob:
            out[name] = glob[name]
        elif parts[0] == "blk" and len(parts) == 3 and parts[2] in layer:
            out[name] = f"model.layers.{parts[1]}.{layer[parts[2]]}"
        else:
            out[name] = f"gguf:{name}"
    return out


def load_gguf(path: str | os.PathLike, dtype=np.float32) -> tuple[ModelArch, dict]:
    gguf_file = GGUFFile(path)
    family, arch = read_gguf_arch(gguf_file, str(path))
    hf_names = _gguf_to_hf_names(family, [t.name for t in gguf_file.tensors])
    by_hf = {hf_names[t.name]: t for t in gguf_file.tensors}

    def tensor(hf_name: str) -> np.ndarray:
        t = by_hf[hf_name]
        if t.tensor_type.name not in SUPPORTED_GGUF_TYPES:
            raise ValueError(f"{t.name}: GGUF tensor type {t.tensor_type.name} is not supported "
                             f"({', '.join(SUPPORTED_GGUF_TYPES)})")
        w = dequantize_f32(t)
        if family.gguf_permutes_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            w = _unpermute_qk(w, arch.num_heads)
        elif family.gguf_permutes_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            w = _unpermute_qk(w, arch.num_kv_heads)
        return w

    return arch, build_params(family, arch, CheckpointTensors(tensor, by_hf, str(path)), dtype)


# ------------------------------------------------------------------------------ safetensors (HF)
def load_safetensors_dir(path: str | os.PathLike, dtype=np.float32) -> tuple[ModelArch, dict]:
    from safetensors.numpy import load_file

    path = Path(path)
    family, arch = read_hf_arch(path)
    tensors: dict[str, np.ndarray] = {}
    for f in _safetensors_files(path):
        for name, t in _load_safetensors_f32(f, load_file).items():
            if name in tensors:     # two files with one name: which is meant is not ours to guess
                raise CheckpointError(f"{path}: tensor {name} is stored twice (again in {f.name})")
            tensors[name] = t
    if not tensors:
        raise ValueError(f"{path}: no *.safetensors files")
    _check_index(path, tensors)
    return arch, build_params(family, arch, CheckpointTensors(tensors.get, tensors, str(path)), dtype,
                              norm_offset=family.hf_norm_offset)


_INDEX = "model.safetensors.index.json"


def _safetensors_files(path: Path) -> list[Path]:
    """The shards a sharded checkpoint's index names (each must exist), else every *.safetensors."""
    if not (path / _INDEX).exists():
        return sorted(path.glob("*.safetensors"))
    weight_map = json.loads((path / _INDEX).read_text()).get("weight_map") or {}
    files = [path / name for name in sorted(set(weight_map.values()))]
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{path / _INDEX} names shard {f.name}, which is missing")
    return files


def _check_index(path: Path, tensors: dict) -> None:
    """The index's weight_map and the shards must list the same tensors."""
    if not (path / _INDEX).exists():
        return
    mapped = set(json.loads((path / _INDEX).read_text())["weight_map"])
    missing, extra = sorted(mapped - tensors.keys()), sorted(tensors.keys() - mapped)
    if missing or extra:
        raise CheckpointError(f"{path}: the shards and {_INDEX} disagree: "
                              f"in the index only {missing[:3]}, in the shards only {extra[:3]}")


def read_hf_arch(path: Path) -> tuple[ModelFamily, ModelArch]:
    """config.json -> (family, arch), the family chosen by architectures[0]."""
    source = str(path / "config.json")
    cfg = json.loads((path / "config.json").read_text())
    architectures = cfg.get("architectures") or []
    if not architectures:
        raise MissingConfigField(f"{source} lacks 'architectures', which names the model family")
    family = family_for_hf(architectures[0], source)
    return family, family.read_hf_config(cfg, source)


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
# 3: the model registry (ModelArch.family, RoPE scaling, rope_parameters).
# 4: params saved uncompressed (see _save_params); the values are the same as 3's.
CONVERTER_VERSION = 4


def _source_files(source: Path) -> list[Path]:
    """The files whose bytes the conversion reads: a .gguf, or a directory's config and tensors."""
    if source.is_dir():
        index = [source / _INDEX] if (source / _INDEX).exists() else []
        return [source / "config.json", *index, *sorted(source.glob("*.safetensors"))]
    return [source]


def cache_entry(source: Path, dtype_name: str, cache_dir: Path, bf16_matmuls: bool = False) -> Path:
    """The cache directory for one (source, dtype, matmul lowering, converter version); holds
    arch.json and params/.

    The name keeps the source's whole file name for people reading the cache, and a hash of its
    resolved path, every input file's size and mtime, the dtype, whether the projections are held
    lowered to bf16 and CONVERTER_VERSION for uniqueness.
    """
    parts = [str(source.resolve()), dtype_name, f"converter-v{CONVERTER_VERSION}"]
    if bf16_matmuls:
        parts.append("bf16-matmuls")
    for f in _source_files(source):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    lowered = "-bf16-matmuls" if bf16_matmuls else ""
    return (cache_dir / f"{source.name}-{dtype_name}{lowered}-{key}").resolve()


def _save_params(ckpt: Path, params: dict) -> None:
    """Saves the params without orbax's default zstd: dequantized float32 weights only shrink to
    62% (SmolLM2: 538 MB -> 333 MB), and every warm start pays the decompression on 2 cores.
    Measured on SmolLM2 f32, files in the page cache, five runs each: restore 1.2-2.2 s
    compressed, 0.67-1.1 s uncompressed; save about the same (2.1-3.5 s either way, most of it
    orbax's own: np.save of the same arrays takes 0.2 s); 514 MB on disk.
    StandardCheckpointer().restore reads either (the codec is in the array metadata);
    CONVERTER_VERSION 4 keeps old compressed entries from being restored, so every cache gets
    the faster entry."""
    import orbax.checkpoint as ocp

    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))
    ckptr.save(ckpt, args=ocp.args.PyTreeSave(params), force=True)


def load_checkpoint(source: Path, dtype_name: str, cache_dir: Path | None,
                    matmul_dtype: str = "float32") -> tuple[ModelArch, dict]:
    """Load converted params from the orbax cache, or convert and save them there.

    Args:
        source: a .gguf file or a Hugging Face directory (config.json + *.safetensors).
        dtype_name: the params' dtype, e.g. "float32".
        cache_dir: where entries live (see cache_entry); None converts without caching.
        matmul_dtype: "bfloat16" (with a float32 dtype): the projections come lowered as the
          runner multiplies them (layers.with_bf16_matmuls), and are cached so. A restart then
          reads half their bytes and skips the rounding (SmolLM2: 0.5 s of a 6 s warm start).
    Returns:
        (arch, params pytree).
    """
    import jax.numpy as jnp

    from jaxserve.model.layers import with_bf16_matmuls

    dtype = jnp.dtype(dtype_name)
    lower = matmul_dtype == "bfloat16" and dtype != jnp.bfloat16
    base_loader = load_gguf if source.suffix == ".gguf" else load_safetensors_dir

    def loader(source, dtype):
        arch, params = base_loader(source, dtype)
        return arch, (with_bf16_matmuls(params) if lower else params)

    if cache_dir is None:
        return loader(source, dtype)
    entry = cache_entry(source, dtype_name, cache_dir, bf16_matmuls=lower)
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
        entry.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)     # written last: its presence says params/ is complete
        _save_params(ckpt, params)
        meta.write_text(json.dumps(dataclasses.asdict(arch)))
        log.info("saved converted params to %s", ckpt)
    except Exception as e:
        log.warning("could not cache converted params at %s: %s", ckpt, e)
    return arch, params
