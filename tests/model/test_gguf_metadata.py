"""model/gguf_metadata.py: the same values as gguf.GGUFReader's field.contents(), and clear errors.

- The real SmolLM2 and Gemma 3 GGUFs: every key, values and their Python types, read whole and
  with every other key skipped (so skipping lands on the next key exactly).
- A file from gguf.GGUFWriter with every value type, arrays of each, and nested arrays (which
  come back nested where contents() flattens them).
- Hand-written files for what GGUFWriter will not write: empty arrays, version 1, garbled counts,
  bad UTF-8, duplicate keys, and every truncation of a whole file.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from jaxserve.model.gguf_metadata import read_gguf_metadata


def _everything(key: str) -> bool:
    return True


def _contents(path: Path) -> dict:
    from gguf import GGUFReader
    return {name: field.contents() for name, field in GGUFReader(str(path)).fields.items()}


def _assert_same(got: dict, want: dict) -> None:
    """Equal values of the same Python types (1 == 1.0 == True, so == alone is not enough)."""
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key] == value, key
        assert type(got[key]) is type(value), key
        if isinstance(value, list):
            assert [type(v) for v in got[key]] == [type(v) for v in value], key


@pytest.mark.parametrize("fixture", ["gguf_path", "gemma3_path"])
def test_real_files_read_as_gguf_reader_reads_them(fixture, request):
    path = request.getfixturevalue(fixture)
    want = _contents(path)     # GGUFReader: seconds per file, once
    assert {"general.architecture", "tokenizer.ggml.tokens", "tokenizer.ggml.merges" if fixture == "gguf_path"
            else "tokenizer.ggml.scores"} <= want.keys()
    _assert_same(read_gguf_metadata(path, _everything), want)
    every_other = set(list(want)[::2])
    _assert_same(read_gguf_metadata(path, every_other.__contains__),
                 {k: v for k, v in want.items() if k in every_other})


# ---------------------------------------------------------------------------------- GGUFWriter
def _f32(x: float) -> float:
    return float(np.float32(x))


def _writer_file(path: Path) -> Path:
    from gguf import GGUFValueType as T
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -2**31)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", "héllo ▁world 日本")
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -2**63)
    w.add_float64("t.f64", 0.1)
    for name, vtype, values in [("u8", T.UINT8, [0, 255]), ("i8", T.INT8, [-128, 127]),
                                ("u16", T.UINT16, [0, 65535]), ("i16", T.INT16, [-32768, 32767]),
                                ("u32", T.UINT32, [0, 2**32 - 1]), ("i32", T.INT32, [-2**31, 2**31 - 1]),
                                ("f32", T.FLOAT32, [0.1, -2.5]), ("bool", T.BOOL, [True, False, True]),
                                ("str", T.STRING, ["a", "", "▁b", "<|im_end|>"]),
                                ("u64", T.UINT64, [0, 2**64 - 1]), ("i64", T.INT64, [-2**63, 2**63 - 1]),
                                ("f64", T.FLOAT64, [0.1, -2.5])]:
        w.add_key_value(f"t.array.{name}", values, T.ARRAY, vtype)
    w.add_key_value("t.nested.ints", [[1, 2], [3]], T.ARRAY, T.ARRAY)
    w.add_key_value("t.nested.strings", [["a", "b"], ["c"]], T.ARRAY, T.ARRAY)
    w.add_key_value("t.nested.deeper", [[[1.5], [2.5]], [[3.5]]], T.ARRAY, T.ARRAY)
    w.add_tensor("weight", np.arange(8, dtype=np.float32))   # a tensor after the metadata: not read
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


WRITTEN = {
    "GGUF.version": 3, "GGUF.tensor_count": 1, "GGUF.kv_count": 29,
    "general.architecture": "llama",
    "t.u8": 255, "t.i8": -128, "t.u16": 65535, "t.i16": -32768, "t.u32": 2**32 - 1, "t.i32": -2**31,
    "t.f32": _f32(0.1), "t.bool": True, "t.bool_false": False, "t.str": "héllo ▁world 日本",
    "t.u64": 2**64 - 1, "t.i64": -2**63, "t.f64": 0.1,
    "t.array.u8": [0, 255], "t.array.i8": [-128, 127], "t.array.u16": [0, 65535], "t.array.i16": [-32768, 32767],
    "t.array.u32": [0, 2**32 - 1], "t.array.i32": [-2**31, 2**31 - 1], "t.array.f32": [_f32(0.1), -2.5],
    "t.array.bool": [True, False, True], "t.array.str": ["a", "", "▁b", "<|im_end|>"],
    "t.array.u64": [0, 2**64 - 1], "t.array.i64": [-2**63, 2**63 - 1], "t.array.f64": [0.1, -2.5],
    "t.nested.ints": [[1, 2], [3]], "t.nested.strings": [["a", "b"], ["c"]],
    "t.nested.deeper": [[[1.5], [2.5]], [[3.5]]],
}


def _flatten(value):
    return [x for v in value for x in _flatten(v)] if isinstance(value, list) else [value]


def test_every_value_type_from_gguf_writer(tmp_path):
    path = _writer_file(tmp_path / "all.gguf")
    got = read_gguf_metadata(path, _everything)
    _assert_same(got, WRITTEN)
    reader = _contents(path)
    nested = [k for k in got if k.startswith("t.nested.")]
    _assert_same({k: v for k, v in got.items() if k not in nested},
                 {k: v for k, v in reader.items() if k not in nested})
    for key in nested:      # contents() flattens arrays of arrays; we keep their shape
        assert _flatten(got[key]) == reader[key], key


def test_unwanted_values_are_skipped_and_never_asked_twice(tmp_path):
    path = _writer_file(tmp_path / "all.gguf")
    asked = []

    def want(key: str) -> bool:
        asked.append(key)
        return key.startswith(("t.array.str", "t.nested.deeper", "t.f64"))

    assert read_gguf_metadata(path, want) == {k: WRITTEN[k] for k in ("t.f64", "t.array.str", "t.nested.deeper")}
    assert asked == list(WRITTEN)
    assert read_gguf_metadata(path, lambda key: False) == {}


# ------------------------------------------------------------------------------ hand-written
def _string(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", vtype) + payload


def _array(elem_type: int, count: int, elements: bytes = b"") -> bytes:
    return struct.pack("<IQ", elem_type, count) + elements


def _gguf(path: Path, *kvs: bytes, version: int = 3, magic: bytes = b"GGUF", kv_count: int | None = None) -> Path:
    count = len(kvs) if kv_count is None else kv_count
    path.write_bytes(magic + struct.pack("<IQQ", version, 0, count) + b"".join(kvs))
    return path


SMALL_KVS = (
    _kv("general.architecture", 8, _string("llama")),
    _kv("a.tokens", 9, _array(8, 3, _string("x") + _string("") + _string("▁yz"))),
    _kv("a.empty", 9, _array(5, 0)),
    _kv("a.empty_strings", 9, _array(8, 0)),
    _kv("a.scores", 9, _array(6, 2, struct.pack("<2f", 0.5, -1.0))),
    _kv("a.nested", 9, _array(9, 2, _array(4, 1, struct.pack("<I", 7)) + _array(4, 0))),
    _kv("a.u8", 0, b"\x07"),
    _kv("a.f64", 12, struct.pack("<d", 2.5)),
)
SMALL = {"general.architecture": "llama", "a.tokens": ["x", "", "▁yz"], "a.empty": [], "a.empty_strings": [],
         "a.scores": [0.5, -1.0], "a.nested": [[7], []], "a.u8": 7, "a.f64": 2.5}


def test_hand_written_file_version_2_and_3(tmp_path):
    for version in (2, 3):
        path = _gguf(tmp_path / f"v{version}.gguf", *SMALL_KVS, version=version)
        got = read_gguf_metadata(path, lambda key: not key.startswith("GGUF."))
        _assert_same(got, SMALL)
        assert read_gguf_metadata(path, lambda key: key == "GGUF.version") == {"GGUF.version": version}


def test_every_truncation_is_a_value_error_naming_the_file(tmp_path):
    whole = _gguf(tmp_path / "whole.gguf", *SMALL_KVS).read_bytes()
    path = tmp_path / "cut.gguf"
    for length in range(len(whole)):
        path.write_bytes(whole[:length])
        for want in (_everything, lambda key: False):
            with pytest.raises(ValueError, match="cut.gguf"):
                read_gguf_metadata(path, want)


def test_truncated_real_header(gguf_path, tmp_path):
    """SmolLM2's header cut inside its token list, read whole and skipped."""
    with open(gguf_path, "rb") as f:
        head = f.read(200_000)
    path = tmp_path / "cut.gguf"
    path.write_bytes(head)
    for want in (_everything, lambda key: False):
        with pytest.raises(ValueError, match=r"cut\.gguf: truncated in the value of 'tokenizer\.ggml\.tokens'"):
            read_gguf_metadata(path, want)


@pytest.mark.parametrize("kvs, kwargs, message", [
    ((), {"magic": b"GGML"}, "not a GGUF file"),
    ((), {"version": 1}, "GGUF version 1 is not supported"),
    ((), {"version": 3 << 24}, r"big-endian"),
    ((), {"kv_count": 2**62}, "kv count"),
    ((_kv("a", 13, b"\0" * 16),), {}, "'a': unknown GGUF value type 13"),
    ((_kv("a", 9, _array(42, 1, b"\0" * 16)),), {}, "'a': unknown GGUF array element type 42"),
    ((_kv("a", 9, _array(4, 2**61)),), {}, "an array of 2305843009213693952 elements cannot fit"),
    ((_kv("a", 9, _array(8, 2**61)),), {}, "cannot fit"),
    ((_kv("a", 8, _string(b"\xff\xfe")),), {}, "'a': invalid UTF-8"),
    ((_kv("a", 9, _array(8, 1, _string(b"\xc3"))),), {}, "'a': invalid UTF-8"),
    ((_kv("a", 0, b"\1"), _kv("a", 0, b"\2")), {}, "duplicate metadata key 'a'"),
    ((_kv("GGUF.version", 0, b"\1"),), {}, "duplicate metadata key 'GGUF.version'"),
    ((_kv("a", 8, struct.pack("<Q", 2**63)),), {}, "truncated in the value of 'a'"),
    ((_kv("a", 9, _array(9, 1, _array(9, 1, _array(9, 1, _array(9, 1, _array(9, 1, _array(
        9, 1, _array(9, 1, _array(9, 1, _array(9, 1, _array(0, 0)))))))))) + b"\0" * 64),), {}, "nested deeper"),
])
def test_garbled_files_are_refused_by_name(tmp_path, kvs, kwargs, message):
    path = _gguf(tmp_path / "bad.gguf", *kvs, **kwargs)
    for want in (_everything, lambda key: False):
        if "invalid UTF-8" in message and want is not _everything:
            assert read_gguf_metadata(path, want) == {}      # skipped strings are never decoded
            continue
        with pytest.raises(ValueError, match=rf"bad\.gguf: .*{message}"):
            read_gguf_metadata(path, want)


def test_empty_and_short_files(tmp_path):
    for size in (0, 23):
        path = tmp_path / f"short{size}.gguf"
        path.write_bytes(b"GGUF"[:size] + b"\0" * max(0, size - 4))
        with pytest.raises(ValueError, match=rf"short{size}\.gguf: {size} bytes is too short"):
            read_gguf_metadata(path, _everything)
