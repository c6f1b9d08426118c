"""A GGUF file read fast: its key/value metadata (`general.architecture`, `tokenizer.ggml.tokens`,
...) and its tensors, as numpy views onto a memmap of the file.

Every server start rebuilds the tokenizer from the GGUF's metadata, and a fresh start converts its
tensors. gguf.GGUFReader builds a numpy view of every part of the file, one memmap slice per
string: 5-7 s for SmolLM2's 49k tokens and merges, against about 0.1 s here. This module parses
the header with one read-only mmap (only the header's pages are touched), struct for scalars and
lengths, one struct call per numeric array, a tight loop per string array; values nobody asked
for are skipped undecoded (numeric arrays by size arithmetic, string arrays by walking their
lengths). `read_gguf_metadata` stops after the key/value section; `GGUFFile` reads the tensor
infos after it too and maps the data. gguf stays the dequantizer (gguf.quants.dequantize takes
our tensors' `.data` as it takes GGUFReader's) and the table of types and their sizes.

Values are what GGUFReader's `field.contents()` gives for the same key: str, int, float or
bool scalars, lists for arrays, and its pseudo-keys `GGUF.version`, `GGUF.tensor_count` and
`GGUF.kv_count` too. Deliberate differences: an array of arrays comes back nested, where
contents() flattens it, and big-endian files are refused, not byte-swapped.

Layout (little-endian): b"GGUF", version u32, tensor count u64, kv count u64, then per kv a key
(u64 length + UTF-8) and a value type u32 followed by the value; strings are u64 length + UTF-8,
arrays are element type u32 + count u64 + the elements. Then per tensor its info: name (a
string), n_dims u32, dims u64[n_dims] (innermost first), ggml type u32, offset u64; the data
begins at the next multiple of `general.alignment` (default 32) after the infos, each tensor at
data start + its offset, of dims[0] / block size * type size bytes per row (GGML_QUANT_SIZES).
"""
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_VERSIONS = (2, 3)     # version 1 had u32 lengths and counts; llama.cpp dropped it too

_STRING, _ARRAY = 8, 9
# value type -> struct code of one scalar; 8 (string) and 9 (array) are handled apart.
_SCALAR_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_SCALARS = {t: struct.Struct("<" + code) for t, code in _SCALAR_CODES.items()}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")
_MIN_KV_BYTES = 8 + 4 + 1       # empty key, value type, a one-byte value
_MAX_ARRAY_DEPTH = 8            # llama.cpp's converters nest none; deeper is a garbled file
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8      # empty name, no dims, type, offset
_MAX_DIMS = 4                   # GGML_MAX_DIMS: llama.cpp refuses more
DEFAULT_ALIGNMENT = 32


def read_gguf_metadata(path: str | Path, want: Callable[[str], bool]) -> dict[str, Any]:
    """The metadata values whose key `want` accepts, in file order.

    Raises ValueError naming the file and the problem for anything that is not a well-formed
    GGUF v2/v3 header (bad magic, unsupported version, truncation, unknown value type, invalid
    UTF-8, a duplicate key); never reads past the end of the file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER.size:
            raise ValueError(f"{path}: {size} bytes is too short for a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Parser(buf, size, path).metadata(want)


def _everything(key: str) -> bool:
    return True


# ggml types whose GGUFReader data is an array of that dtype (of the tensor's shape); every other
# type's data is its bytes, uint8 of shape [..., row bytes].
_NATIVE_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


@dataclass(frozen=True, eq=False)
class GGUFTensor:
    """One tensor of a GGUFFile.

    shape: the dims as the file lists them, innermost first (GGUFReader's ReaderTensor.shape);
    the numpy shape of the values is reversed(shape).
    data: a read-only ndarray view onto the file's np.memmap, of GGUFReader's dtype and shape for the type
    (the values for F32, F16, F64 and the integer types, else the raw blocks as uint8
    [..., row bytes]), so gguf.quants.dequantize(t.data, t.tensor_type) takes it.
    """
    name: str
    tensor_type: Any            # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data_offset: int            # of the first byte, from the start of the file
    data: np.ndarray


class GGUFFile:
    """A GGUF file's metadata and tensors, read in about 0.1 s where gguf.GGUFReader takes seconds.

    metadata: every key's value, as read_gguf_metadata returns them (GGUF.* pseudo-keys too).
    tensors: GGUFTensor per tensor info, in file order; their data is mapped, not read, so only
    the pages a caller touches are loaded.

    Raises ValueError naming the file for a malformed header (see read_gguf_metadata), a
    malformed or truncated tensor info, an unknown ggml type, a duplicate tensor name, a bad
    general.alignment, and naming the tensor when its bytes run past the end of the file.
    """

    def __init__(self, path: str | Path):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = path = Path(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                raise ValueError(f"{path}: {size} bytes is too short for a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                parser = _Parser(buf, size, path)
                self.metadata: dict[str, Any] = parser.metadata(_everything)
                infos = parser.tensor_infos(self.metadata["GGUF.tensor_count"])
                infos_end = parser.pos
        self.size = size
        self.alignment = _alignment(self.metadata, path)
        self.data_offset = -(-infos_end // self.alignment) * self.alignment
        # Plain ndarray views of the memmap: slicing a np.memmap subclass costs a Python
        # __array_finalize__ per view, and gguf.quants takes tens of thousands of them.
        file = np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))
        self.tensors: list[GGUFTensor] = []
        names: set[str] = set()
        for name, dims, raw_type, offset in infos:
            if name in names:
                raise ValueError(f"{path}: tensor {name!r} is listed twice")
            names.add(name)
            try:
                ggml_type = GGMLQuantizationType(raw_type)
                block_size, type_size = GGML_QUANT_SIZES[ggml_type]
            except (ValueError, KeyError):
                raise ValueError(f"{path}: tensor {name!r} has unknown ggml type {raw_type}") from None
            np_shape = tuple(reversed(dims))
            dtype = _NATIVE_DTYPES.get(ggml_type.name)
            if dtype is None:
                if not dims or dims[0] % block_size:
                    raise ValueError(f"{path}: tensor {name!r} of shape {list(dims)}: its rows are not whole "
                                     f"{ggml_type.name} blocks of {block_size}")
                np_shape = (*np_shape[:-1], dims[0] // block_size * type_size)
            n_elements = prod(dims)
            n_bytes = n_elements // block_size * type_size
            start = self.data_offset + offset
            if start + n_bytes > size:
                raise ValueError(f"{path}: tensor {name!r} ({ggml_type.name}, shape {list(dims)}) needs bytes "
                                 f"{start}..{start + n_bytes}, past the end of the {size}-byte file (truncated?)")
            data = file[start:start + n_bytes]
            if dtype is not None:
                data = data.view(dtype)
            self.tensors.append(GGUFTensor(name, ggml_type, tuple(dims), n_elements, n_bytes, start,
                                           data.reshape(np_shape)))


def _alignment(metadata: dict[str, Any], path: Path) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(value) is not int or value <= 0 or value & (value - 1):
        raise ValueError(f"{path}: general.alignment {value!r} is not a power of two")
    return value


class _Parser:
    """A cursor over the mapped file; `part` and `key` say what is being read, for error messages."""

    def __init__(self, buf: mmap.mmap, size: int, path: Path):
        self.buf, self.size, self.path = buf, size, path
        self.pos = 0
        self.part, self.key = "the value of", "the header"

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {problem}")

    def metadata(self, want: Callable[[str], bool]) -> dict[str, Any]:
        magic, version, tensor_count, kv_count = _HEADER.unpack_from(self.buf, 0)
        if magic != b"GGUF":
            raise self.error(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        if version not in SUPPORTED_VERSIONS:
            hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
            raise self.error(f"GGUF version {version}{hint} is not supported; "
                             f"supported: {', '.join(map(str, SUPPORTED_VERSIONS))}")
        self.pos = _HEADER.size
        if kv_count * _MIN_KV_BYTES > self.size - self.pos:
            raise self.error(f"kv count {kv_count} cannot fit in the file's {self.size} bytes")
        header = {"GGUF.version": version, "GGUF.tensor_count": tensor_count, "GGUF.kv_count": kv_count}
        out = {name: value for name, value in header.items() if want(name)}
        seen = set(header)      # GGUFReader refuses a key that repeats one of its pseudo-keys too
        try:
            for i in range(kv_count):
                self.key = f"key #{i}"
                key = self.string()
                self.key = repr(key)
                if key in seen:
                    raise self.error(f"duplicate metadata key {key!r}")
                seen.add(key)
                value_type = self.u32()
                if want(key):
                    out[key] = self.value(value_type, 0)
                else:
                    self.skip(value_type, 0)
        except struct.error:     # a fixed-size read ran past the end
            raise self.error(f"truncated in the value of {self.key}") from None
        except UnicodeDecodeError as e:
            raise self.error(f"{self.key}: invalid UTF-8 in a string ({e.reason})") from None
        return out

    def tensor_infos(self, count: int) -> list[tuple[str, tuple[int, ...], int, int]]:
        """(name, dims, raw ggml type, offset) per tensor; the cursor ends after the last info."""
        if count * _MIN_TENSOR_INFO_BYTES > self.size - self.pos:
            raise self.error(f"tensor count {count} cannot fit in the {self.size - self.pos} bytes "
                             "left after the metadata")
        self.part = "the info of"
        infos = []
        try:
            for i in range(count):
                self.key = f"tensor #{i}"
                name = self.string()
                self.key = f"tensor {name!r}"
                n_dims = self.u32()
                if n_dims > _MAX_DIMS:
                    raise self.error(f"{self.key} has {n_dims} dims; GGUF allows at most {_MAX_DIMS}")
                dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.advance(8 * n_dims))
                raw_type = self.u32()
                offset = self.u64()
                infos.append((name, dims, raw_type, offset))
        except struct.error:
            raise self.error(f"truncated in the info of {self.key}") from None
        except UnicodeDecodeError as e:
            raise self.error(f"{self.key}: invalid UTF-8 in the tensor name ({e.reason})") from None
        return infos

    # ------------------------------------------------------------------- primitive reads
    def u32(self) -> int:
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self) -> int:
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def advance(self, nbytes: int) -> int:
        """Moves past nbytes, returning where they start; refuses to pass the end."""
        start = self.pos
        if start + nbytes > self.size:
            raise self.error(f"truncated in {self.part} {self.key}: {nbytes} bytes wanted "
                             f"at offset {start}, the file has {self.size}")
        self.pos = start + nbytes
        return start

    def string(self) -> str:
        n = self.u64()
        start = self.advance(n)
        return self.buf[start:self.pos].decode("utf-8")

    # ---------------------------------------------------------------------------- values
    def value(self, value_type: int, depth: int) -> Any:
        scalar = _SCALARS.get(value_type)
        if scalar is not None:
            (v,) = scalar.unpack_from(self.buf, self.advance(scalar.size))
            return v
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            return self.array(depth)
        raise self.error(f"{self.key}: unknown GGUF value type {value_type}")

    def array(self, depth: int) -> list:
        elem_type, count = self.array_header(depth)
        scalar = _SCALARS.get(elem_type)
        if scalar is not None:
            start = self.advance(count * scalar.size)
            return list(struct.unpack_from(f"<{count}{_SCALAR_CODES[elem_type]}", self.buf, start))
        if elem_type == _STRING:
            return self.string_array(count)
        return [self.value(elem_type, depth + 1) for _ in range(count)]

    def string_array(self, count: int) -> list[str]:
        # The vocabulary and merges: ~100k strings per file, so locals and no method calls.
        buf, size, pos = self.buf, self.size, self.pos
        unpack_length = _U64.unpack_from
        out = []
        append = out.append
        for _ in range(count):
            (n,) = unpack_length(buf, pos)
            start = pos + 8
            pos = start + n
            if pos > size:
                raise self.error(f"truncated in the value of {self.key}: a {n}-byte string at offset {start}")
            append(buf[start:pos].decode("utf-8"))
        self.pos = pos
        return out

    def array_header(self, depth: int) -> tuple[int, int]:
        """Element type and count, checked against the bytes left, so a garbled count fails here
        instead of looping over elements that cannot exist."""
        if depth >= _MAX_ARRAY_DEPTH:
            raise self.error(f"{self.key}: arrays nested deeper than {_MAX_ARRAY_DEPTH}")
        elem_type = self.u32()
        count = self.u64()
        if elem_type in _SCALARS:
            min_size = _SCALARS[elem_type].size
        elif elem_type == _STRING:
            min_size = 8
        elif elem_type == _ARRAY:
            min_size = 12
        else:
            raise self.error(f"{self.key}: unknown GGUF array element type {elem_type}")
        if count * min_size > self.size - self.pos:
            raise self.error(f"truncated in the value of {self.key}: an array of {count} elements "
                             f"cannot fit in the {self.size - self.pos} bytes left")
        return elem_type, count

    # ----------------------------------------------------------------- skipping unwanted values
    def skip(self, value_type: int, depth: int) -> None:
        scalar = _SCALARS.get(value_type)
        if scalar is not None:
            self.advance(scalar.size)
        elif value_type == _STRING:
            self.advance(self.u64())
        elif value_type == _ARRAY:
            self.skip_array(depth)
        else:
            raise self.error(f"{self.key}: unknown GGUF value type {value_type}")

    def skip_array(self, depth: int) -> None:
        elem_type, count = self.array_header(depth)
        scalar = _SCALARS.get(elem_type)
        if scalar is not None:
            self.advance(count * scalar.size)
        elif elem_type == _STRING:
            # Walk the lengths without slicing or decoding.
            buf, size, pos = self.buf, self.size, self.pos
            unpack_length = _U64.unpack_from
            for _ in range(count):
                pos += 8 + unpack_length(buf, pos)[0]
                if pos > size:
                    raise self.error(f"truncated in the value of {self.key}")
            self.pos = pos
        else:
            for _ in range(count):
                self.skip(elem_type, depth + 1)
