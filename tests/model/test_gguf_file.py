"""model/gguf_metadata.GGUFFile: the same tensors as gguf.GGUFReader's, and clear errors.

- The real SmolLM2 (Q4_1, Q8_0, F32) and Gemma 3 (Q4_K, Q5_0, Q6_K, Q8_0, F32) GGUFs: every
  tensor's name, type, shape, data offset, data dtype and shape and bytes equal GGUFReader's, and
  the metadata equals read_gguf_metadata's; weights.dequantize_f32 (blocks regrouped into other
  rows) gives gguf.quants.dequantize's values bit for bit.
- A GGUFWriter file with every kind of data layout (native dtypes, quantized blocks, BF16, 1-3
  dims) and a custom alignment, compared with GGUFReader the same way.
- Truncations (ValueError naming the file, and the tensor when its bytes are cut), garbled
  tensor infos, duplicate names, unknown types and bad alignments.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from jaxserve.model.gguf_metadata import GGUFFile, read_gguf_metadata
from jaxserve.model.weights import dequantize_f32


def _assert_same_tensors(path: Path) -> GGUFFile:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    got = GGUFFile(path)
    assert got.data_offset == reader.data_offset
    assert [t.name for t in got.tensors] == [t.name for t in reader.tensors]
    for g, r in zip(got.tensors, reader.tensors):
        assert g.tensor_type == r.tensor_type, g.name
        assert g.shape == tuple(int(d) for d in r.shape), g.name
        assert (g.n_elements, g.n_bytes, g.data_offset) == (r.n_elements, r.n_bytes, r.data_offset), g.name
        assert (g.data.dtype, g.data.shape) == (r.data.dtype, r.data.shape), g.name
        assert g.data.tobytes() == r.data.tobytes(), g.name
        assert not g.data.flags.writeable, g.name
    return got


@pytest.mark.parametrize("fixture", ["gguf_path", "gemma3_path"])
def test_real_files_read_as_gguf_reader_reads_them(fixture, request):
    from gguf.quants import dequantize

    path = request.getfixturevalue(fixture)
    got = _assert_same_tensors(path)
    assert got.metadata == read_gguf_metadata(path, lambda key: True)
    assert len(got.tensors) == got.metadata["GGUF.tensor_count"] > 200
    one_per_type = {t.tensor_type: t for t in got.tensors}
    assert len(one_per_type) >= 3
    for t in one_per_type.values():
        want = dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape)))
        w = dequantize_f32(t)
        assert w.dtype == np.float32 and w.shape == want.shape, t.name
        np.testing.assert_array_equal(w, want, err_msg=t.name)


# ---------------------------------------------------------------------------------- GGUFWriter
def _writer_file(path: Path, alignment: int | None = None) -> Path:
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_tensor("f32.1d", rng.standard_normal(7).astype(np.float32))
    w.add_tensor("f16.2d", rng.standard_normal((3, 5)).astype(np.float16))
    w.add_tensor("i32.3d", rng.integers(-9, 9, (2, 3, 4), dtype=np.int32))
    w.add_tensor("i8.1d", rng.integers(-9, 9, 5, dtype=np.int8))
    for name, qtype, shape in [("q8_0.2d", Q.Q8_0, (4, 64)), ("q8_0.3d", Q.Q8_0, (2, 3, 32)),
                               ("q4_0.2d", Q.Q4_0, (3, 96)), ("bf16.2d", Q.BF16, (3, 6))]:
        values = rng.standard_normal(shape).astype(np.float32)
        w.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_layout_from_gguf_writer(tmp_path, alignment):
    got = _assert_same_tensors(_writer_file(tmp_path / "all.gguf", alignment))
    assert got.alignment == (alignment or 32)
    assert got.data_offset % got.alignment == 0
    by_name = {t.name: t for t in got.tensors}
    assert by_name["f16.2d"].data.dtype == np.float16 and by_name["f16.2d"].shape == (5, 3)
    assert by_name["q8_0.3d"].data.shape == (2, 3, 34)          # 32 values -> one 34-byte block
    assert by_name["bf16.2d"].data.dtype == np.uint8 and by_name["bf16.2d"].data.shape == (3, 12)


def test_truncated_data_names_the_tensor(tmp_path):
    whole = _writer_file(tmp_path / "whole.gguf").read_bytes()
    info = GGUFFile(tmp_path / "whole.gguf")
    path = tmp_path / "cut.gguf"
    for t in info.tensors:
        path.write_bytes(whole[:t.data_offset + t.n_bytes - 1])
        with pytest.raises(ValueError, match=rf"cut\.gguf: tensor '{t.name}' .*past the end of the"):
            GGUFFile(path)
        path.write_bytes(whole[:t.data_offset + t.n_bytes])      # this one complete: the next is cut
        later = [u for u in info.tensors if u.data_offset + u.n_bytes > t.data_offset + t.n_bytes]
        if later:
            with pytest.raises(ValueError, match=rf"tensor '{later[0].name}'"):
                GGUFFile(path)


def test_every_truncation_of_the_header_is_a_value_error(tmp_path):
    whole = _writer_file(tmp_path / "whole.gguf").read_bytes()
    data_offset = GGUFFile(tmp_path / "whole.gguf").data_offset
    path = tmp_path / "cut.gguf"
    for length in range(data_offset):
        path.write_bytes(whole[:length])
        with pytest.raises(ValueError, match="cut.gguf"):
            GGUFFile(path)


def test_truncated_real_file_names_the_tensor(gguf_path, tmp_path):
    """SmolLM2 without its last megabyte: the tensors there are named."""
    whole = GGUFFile(gguf_path)
    last = max(whole.tensors, key=lambda t: t.data_offset)
    path = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(whole.size - 1_000_000))
    with pytest.raises(ValueError, match=r"cut\.gguf: tensor '.*' \(.*\) needs bytes"):
        GGUFFile(path)
    assert last.data_offset + last.n_bytes > whole.size - 1_000_000


# ------------------------------------------------------------------------------ hand-written
def _string(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data)) + data


def _info(name: str | bytes, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0,
          n_dims: int | None = None) -> bytes:
    n = len(dims) if n_dims is None else n_dims
    return _string(name) + struct.pack(f"<I{len(dims)}QIQ", n, *dims, ggml_type, offset)


def _gguf(path: Path, *infos: bytes, kvs: bytes = b"", kv_count: int = 0, data: bytes = b"",
          tensor_count: int | None = None) -> Path:
    count = len(infos) if tensor_count is None else tensor_count
    header = b"GGUF" + struct.pack("<IQQ", 3, count, kv_count) + kvs + b"".join(infos)
    path.write_bytes(header + b"\0" * (-len(header) % 32) + data)
    return path


def test_hand_written_file(tmp_path):
    values = np.arange(6, dtype=np.float32)
    path = _gguf(tmp_path / "ok.gguf", _info("a", (3, 2)), _info("b", (6,), offset=32),
                 data=values.tobytes() + b"\0" * 8 + values.tobytes())
    got = GGUFFile(path)
    assert [(t.name, t.shape, t.data.shape) for t in got.tensors] == [("a", (3, 2), (2, 3)), ("b", (6,), (6,))]
    np.testing.assert_array_equal(got.tensors[0].data, values.reshape(2, 3))
    np.testing.assert_array_equal(got.tensors[1].data, values)
    assert got.metadata == {"GGUF.version": 3, "GGUF.tensor_count": 2, "GGUF.kv_count": 0}


def _alignment_kv(value_type: int, payload: bytes) -> bytes:
    return _string("general.alignment") + struct.pack("<I", value_type) + payload


@pytest.mark.parametrize("case, match", [
    ({"infos": (_info("a", (4,)), _info("a", (4,)))}, "tensor 'a' is listed twice"),
    ({"infos": (_info("a", (4,), ggml_type=999),)}, "tensor 'a' has unknown ggml type 999"),
    ({"infos": (_info("a", (1, 1, 1, 1, 1)),)}, "tensor 'a' has 5 dims"),
    ({"infos": (_info("q", (33,), ggml_type=8),)}, r"tensor 'q' of shape \[33\]: its rows are not whole Q8_0"),
    ({"infos": (_info(b"\xff", (4,)),)}, "invalid UTF-8 in the tensor name"),
    ({"infos": (_info("a", (4,), offset=2**40),)}, "tensor 'a' .*past the end"),
    ({"infos": (), "tensor_count": 10**9}, "tensor count 1000000000 cannot fit"),
    ({"infos": (_info("a", (4,), n_dims=2**31),)}, "tensor 'a' has 2147483648 dims"),
    ({"infos": (_info("a", (4,)),), "kvs": _alignment_kv(4, struct.pack("<I", 48)), "kv_count": 1},
     "general.alignment 48 is not a power of two"),
    ({"infos": (_info("a", (4,)),), "kvs": _alignment_kv(4, struct.pack("<I", 0)), "kv_count": 1},
     "general.alignment 0 is not a power of two"),
    ({"infos": (_info("a", (4,)),), "kvs": _alignment_kv(8, _string("32")), "kv_count": 1},
     "general.alignment '32' is not a power of two"),
])
def test_garbled_tensor_infos_are_value_errors_naming_the_file(tmp_path, case, match):
    infos = case.pop("infos")
    path = _gguf(tmp_path / "bad.gguf", *infos, data=b"\0" * 64, **case)
    with pytest.raises(ValueError, match=rf"bad\.gguf: .*{match}"):
        GGUFFile(path)


def test_truncated_tensor_info(tmp_path):
    whole = _gguf(tmp_path / "whole.gguf", _info("first", (4,)), _info("second", (4,), offset=32),
                  data=b"\0" * 64).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:24 + len(_info("first", (4,))) + 8 + 3])    # inside the name "second"
    with pytest.raises(ValueError, match=r"cut\.gguf: truncated in the info of tensor #1"):
        GGUFFile(cut)
    cut.write_bytes(whole[:24 + len(_info("first", (4,))) + len(_info("second", (4,))) - 2])
    with pytest.raises(ValueError, match=r"cut\.gguf: truncated in the info of tensor 'second'"):
        GGUFFile(cut)


def test_f32_params_do_not_keep_the_file_mapped(tmp_path):
    """F32 tensors are views of the file's memmap; load_gguf's params are copies (writable, and
    holding no mapping of a file that may be replaced)."""
    import jax

    from jaxserve.model import weights
    from jaxserve.model.arch import ModelArch
    from jaxserve.model.llama import init_random_params
    from tests.model.files import write_gguf

    arch = ModelArch(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position=256, tie_word_embeddings=False,
                     rms_norm_eps=2.0**-17)
    params = jax.tree.map(np.asarray, init_random_params(arch, jax.random.key(0)))
    path = write_gguf(tmp_path / "m.gguf", arch, params)
    assert {t.tensor_type.name for t in GGUFFile(path).tensors} == {"F32"}
    _, got = weights.load_gguf(path)
    for leaf in jax.tree.leaves(got):
        base = leaf
        while isinstance(base, np.ndarray):
            assert not isinstance(base, np.memmap)
            base = base.base
        assert base is None and leaf.flags.writeable
