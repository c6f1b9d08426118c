"""Checkpoint loading: GGUF and safetensors round trips, bf16 without torch, the orbax param cache."""
from __future__ import annotations

import dataclasses
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxserve.model import weights
from jaxserve.model.arch import ModelArch
from jaxserve.model.llama import init_random_params
from jaxserve.model.source import cache_dir
from tests.model.files import gguf_name, hf_tensors, write_gguf, write_hf_dir

ARCH = ModelArch(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=8, max_position=256, tie_word_embeddings=False,
                 rms_norm_eps=2.0**-17)   # exact in the f32 that GGUF stores


def _params(arch: ModelArch = ARCH, seed: int = 0) -> dict:
    return jax.tree.map(np.asarray, init_random_params(arch, jax.random.key(seed)))


def _assert_same(got: dict, want: dict, **tol) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


def test_gguf_round_trip(tmp_path):
    params = _params()
    arch, got = weights.load_gguf(write_gguf(tmp_path / "m.gguf", ARCH, params))
    assert arch == ARCH
    _assert_same(got, params, rtol=0, atol=0)


@pytest.mark.parametrize("arch_name", ["llama", "mistral", "qwen2"])
def test_gguf_architectures(tmp_path, arch_name):
    """llama and mistral files carry llama.cpp's q/k row permutation; qwen2 files do not, and have biases."""
    arch = dataclasses.replace(ARCH, qkv_bias=arch_name == "qwen2",
                               family="qwen2" if arch_name == "qwen2" else ARCH.family)
    params = _params(arch)
    got_arch, got = weights.load_gguf(write_gguf(tmp_path / "m.gguf", arch, params, arch_name))
    assert got_arch == arch
    _assert_same(got, params, rtol=0, atol=0)


# Inner dimensions of 256: the K-quant block size.
ARCH_256 = dataclasses.replace(ARCH, hidden_size=256, intermediate_size=256, head_dim=64)


def _random_k_blocks(rng, shape: tuple[int, int], qtype) -> np.ndarray:
    """Valid K-quant bytes for a [rows, cols] tensor: random bits with small finite f16 scales."""
    from gguf.constants import GGML_QUANT_SIZES
    block, size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    d = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype.name == "Q4_K":       # d, dmin (f16), 12 bytes of 6-bit scales, 128 of nibbles
        data[..., 0:2], data[..., 2:4] = d, d
    else:                          # Q6_K: 128 + 64 bytes of bits, 16 int8 scales, d (f16) last
        data[..., 208:210] = d
    return data.reshape(shape[0], -1)


@pytest.mark.parametrize("type_name", [t for t in weights.SUPPORTED_GGUF_TYPES if t != "F32"])
def test_gguf_tensor_types(tmp_path, type_name):
    """Every listed type loads as gguf's dequantization of its bytes (q/k rows un-permuted after)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    qtype = GGMLQuantizationType[type_name]
    rng = np.random.default_rng(3)
    params = _params(ARCH_256)
    want = {}

    def encode(gname: str, t: np.ndarray):
        if t.ndim != 2:
            return None                              # norms and biases stay F32, as in real files
        data = (_random_k_blocks(rng, t.shape, qtype) if type_name in ("Q4_K", "Q6_K")
                else quantize(t, qtype))
        w = np.asarray(dequantize(data, qtype), np.float32).reshape(t.shape)
        if gname.endswith("attn_q.weight"):
            w = weights._unpermute_qk(w, ARCH_256.num_heads)
        elif gname.endswith("attn_k.weight"):
            w = weights._unpermute_qk(w, ARCH_256.num_kv_heads)
        want[gname] = w
        return data, qtype

    path = write_gguf(tmp_path / f"m-{type_name}.gguf", ARCH_256, params, encode=encode)
    _, got = weights.load_gguf(path)
    original = hf_tensors(ARCH_256, params)
    for name, t in hf_tensors(ARCH_256, got).items():
        gname = gguf_name(name)
        if gname in want:
            np.testing.assert_array_equal(t, want[gname], err_msg=gname)
            if type_name not in ("Q4_K", "Q6_K"):    # and stays near the weights it encodes
                assert np.abs(t - original[name]).max() < 0.5 * np.abs(original[name]).max(), gname
        else:
            np.testing.assert_array_equal(t, original[name], err_msg=gname)
    assert len(want) == 7 * ARCH_256.num_layers + 2    # every matrix went through the type


@pytest.mark.parametrize("reader", ["safetensors", "raw"])
def test_bf16_safetensors_dir_loads_without_torch(tmp_path, monkeypatch, reader):
    params = _params()
    path = write_hf_dir(tmp_path / "bf16", ARCH, params, dtype=ml_dtypes.bfloat16)
    from safetensors.numpy import load_file
    lib = load_file(str(path / "model.safetensors"))
    # Any `import torch` (or safetensors.torch) now raises ImportError.
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    if reader == "raw":   # as safetensors releases without ml_dtypes support do
        def refuse(*_):
            raise TypeError("data type 'bfloat16' not understood")
        monkeypatch.setattr("safetensors.numpy.load_file", refuse)
    arch, got = weights.load_safetensors_dir(path)
    assert arch == ARCH
    want = jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    _assert_same(got, want, rtol=0, atol=0)       # bf16 -> f32 is exact
    raw = weights._read_safetensors_raw(path / "model.safetensors")
    assert raw.keys() == lib.keys() == hf_tensors(ARCH, params).keys()
    for k in raw:
        np.testing.assert_array_equal(raw[k], np.asarray(lib[k], np.float32))


def test_dotted_names_get_separate_cache_entries(tmp_path):
    """Bug: the arch file was named with Path.with_suffix, so 'Llama-3.2-1B' and 'Llama-3.1-8B'
    both wrote 'Llama-3.arch.json', and a restart restored one model's params with the other's arch."""
    small = dataclasses.replace(ARCH, num_layers=1, hidden_size=16, head_dim=4)
    sources = {tmp_path / "Llama-3.2-1B-Instruct-Q4_K_M.gguf": (ARCH, _params(ARCH, 1)),
               tmp_path / "Llama-3.1-8B-Instruct-Q4_K_M.gguf": (small, _params(small, 2))}
    for path, (arch, params) in sources.items():
        write_gguf(path, arch, params)
    cache = tmp_path / "params"
    for path in sources:                       # convert and save both
        weights.load_checkpoint(path, "float32", cache)
    for path, (arch, params) in sources.items():   # restore both
        got_arch, got = weights.load_checkpoint(path, "float32", cache)
        assert got_arch == arch, path.name
        _assert_same(got, params, rtol=0, atol=0)
    # The same source in another dtype is another entry: the one in float32 still restores.
    path, (arch, params) = next(iter(sources.items()))
    weights.load_checkpoint(path, "bfloat16", cache)
    assert weights.load_checkpoint(path, "float32", cache)[0] == arch


def test_changed_converter_is_not_served_from_the_cache(tmp_path, monkeypatch):
    """Bug: the cache key had no converter version, so params converted by an older loader were
    restored after the conversion changed."""
    path = write_hf_dir(tmp_path / "model", ARCH, _params())
    calls = []
    convert = weights.load_safetensors_dir
    monkeypatch.setattr(weights, "load_safetensors_dir", lambda *a: calls.append(a) or convert(*a))
    cache = tmp_path / "params"
    weights.load_checkpoint(path, "float32", cache)
    weights.load_checkpoint(path, "float32", cache)
    assert len(calls) == 1                         # the second load restored
    monkeypatch.setattr(weights, "CONVERTER_VERSION", getattr(weights, "CONVERTER_VERSION", 1) + 1,
                        raising=False)
    weights.load_checkpoint(path, "float32", cache)
    assert len(calls) == 2                         # a new converter converts again


def test_tensors_rewritten_in_place_are_converted_again(tmp_path):
    """A directory's key covers each file's size and mtime, not only the directory's own."""
    path = write_hf_dir(tmp_path / "model", ARCH, _params(seed=1))
    cache = tmp_path / "params"
    weights.load_checkpoint(path, "float32", cache)
    newer = _params(seed=2)
    data = (write_hf_dir(tmp_path / "newer", ARCH, newer) / "model.safetensors").read_bytes()
    with open(path / "model.safetensors", "r+b") as f:    # same size, same inode, new bytes
        f.write(data)
    _, got = weights.load_checkpoint(path, "float32", cache)
    _assert_same(got, newer, rtol=0, atol=0)


def test_session_converts_its_own_params(private_cache, tmp_path_factory):
    """Tests never restore params converted by an earlier run: the param cache is this session's."""
    assert cache_dir() == private_cache
    assert str(private_cache).startswith(str(tmp_path_factory.getbasetemp()))


def test_bf16_matmul_params_are_cached_lowered(tmp_path, monkeypatch):
    """With matmul_dtype bfloat16 the cache holds the projections as the runner multiplies them
    (bf16 bits), so a restart neither rounds them again nor reads their float32 bytes; the runner
    ends with the same arrays either way."""
    import jax.numpy as jnp

    from jaxserve.model.attention import AttentionOptions
    from jaxserve.model.layers import with_bf16_matmuls
    from jaxserve.runner import ModelRunner
    from pallas_kernels.common import BF16_BITS

    path = write_hf_dir(tmp_path / "model", ARCH, _params())
    calls = []
    convert = weights.load_safetensors_dir
    monkeypatch.setattr(weights, "load_safetensors_dir", lambda *a: calls.append(a) or convert(*a))
    cache = tmp_path / "params"
    _, fresh = weights.load_checkpoint(path, "float32", cache, "bfloat16")
    arch, restored = weights.load_checkpoint(path, "float32", cache, "bfloat16")
    assert len(calls) == 1                          # the second load restored
    want = with_bf16_matmuls(convert(path)[1])
    for got in (fresh, restored):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert restored["layers"]["wq"]["kernel"].dtype == BF16_BITS
    assert restored["lm_head"].dtype == jnp.bfloat16
    # Float32 matmuls are another entry, not lowered.
    _, plain = weights.load_checkpoint(path, "float32", cache)
    assert len(calls) == 2 and all(x.dtype == np.float32 for x in jax.tree.leaves(plain))

    def runner(params):
        return ModelRunner(arch, params, 4, 16, jnp.float32, AttentionOptions(impl="xla"),
                           bf16_matmuls=True).params
    for a, b in zip(jax.tree.leaves(runner(restored)), jax.tree.leaves(runner(plain))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
