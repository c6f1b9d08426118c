"""A GGUF file's key/value metadata (`general.architecture`, `tokenizer.ggml.tokens`, ...), read fast.

Every server start rebuilds the tokenizer from the GGUF's metadata. gguf.GGUFReader builds a
numpy view of every part of the file, one memmap slice per string: 5-7 s for SmolLM2's 49k
tokens and merges, against about 0.1 s here. This module parses only the header's key/value
section: one read-only mmap (only the header's pages are touched), struct for scalars and
lengths, one struct call per numeric array, a tight loop per string array; values nobody asked
for are skipped undecoded (numeric arrays by size arithmetic, string arrays by walking their
lengths). GGUFReader stays the reader of tensors (jaxserve/model/weights.py).

Values are what GGUFReader's `field.contents()` gives for the same key: str, int, float or
bool scalars, lists for arrays, and its pseudo-keys `GGUF.version`, `GGUF.tensor_count` and
`GGUF.kv_count` too. Deliberate differences: an array of arrays comes back nested, where
contents() flattens it, and big-endian files are refused, not byte-swapped.

Layout (little-endian): b"GGUF", version u32, tensor count u64, kv count u64, then per kv a key
(u64 length + UTF-8) and a value type u32 followed by the value; strings are u64 length + UTF-8,
arrays are element type u32 + count u64 + the elements.
"""
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUPPORTED_VERSIONS = (2, 3)     # version 1 had u32 lengths and counts; llama.cpp dropped it too

_STRING, _ARRAY = 8, 9
# value type -> struct code of one scalar; 8 (string) and 9 (array) are handled apart.
_SCALAR_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_SCALARS = {t: struct.Struct("<" + code) for t, code in _SCALAR_CODES.items()}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")
_MIN_KV_BYTES = 8 + 4 + 1       # empty key, value type, a one-byte value
_MAX_ARRAY_DEPTH = 8            # llama.cpp's converters nest none; deeper is a garbled file


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


class _Parser:
    """A cursor over the mapped file; `key` is the key being read, for error messages."""

    def __init__(self, buf: mmap.mmap, size: int, path: Path):
        self.buf, self.size, self.path = buf, size, path
        self.pos = 0
        self.key = "the header"

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
            raise self.error(f"truncated in the value of {self.key}: {nbytes} bytes wanted "
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
