"""Compiled programs on disk, so a restart deserializes them instead of tracing and compiling.

JAX's persistent compilation cache (left off: see cli.enable_compilation_cache) saves only
XLA's compile: each start still traces and lowers every program (0.1-0.7 s each for SmolLM2 on a 2-core CPU) to compute the
cache key. This store keeps whole serialized executables (jax.experimental.serialize_executable)
under a key we compute without tracing: the runner's fingerprint (everything a program depends
on besides its arguments' layout, including a hash of this package's source) and the layout.

A file is only ever read by the process user that wrote it: deserializing runs code, so the
directory must not be writable by others (it lives in the user's cache, like JAX's own).
Anything unreadable is ignored and rebuilt; a store must never stop a start.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shutil
from pathlib import Path

import jax

log = logging.getLogger(__name__)

_store_root: Path | None = None


def enable(path: Path | None) -> None:
    """Keep runners' executables under path (None: off). Process-wide, like JAX's cache dir."""
    global _store_root
    _store_root = None if path is None else Path(path)


def enabled_root() -> Path | None:
    return _store_root


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """A hash of every Python file of jaxserve and pallas_kernels: any code change is a new key."""
    import jaxserve
    import pallas_kernels

    h = hashlib.sha256()
    for package in (jaxserve, pallas_kernels):
        root = Path(package.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(*parts) -> str:
    """parts (reprs of what the programs close over) plus the software and machine they run on."""
    import jaxlib

    devices = jax.devices()
    base = [jax.__version__, jaxlib.__version__,
            devices[0].platform, getattr(devices[0], "device_kind", ""), str(len(devices)),
            os.environ.get("XLA_FLAGS", ""), str(jax.config.jax_enable_x64), source_hash()]
    return hashlib.sha256("\0".join(base + [repr(p) for p in parts]).encode()).hexdigest()


KEEP_FINGERPRINTS = 8   # fingerprint directories kept; the least recently written go first


class ExecutableStore:
    def __init__(self, root: Path, fingerprint: str):
        self.root = Path(root)
        self.dir = self.root / fingerprint[:24]
        self.fingerprint = fingerprint

    def _path(self, name: str, key: tuple) -> Path:
        digest = hashlib.sha256(f"{self.fingerprint}\0{name}\0{key!r}".encode()).hexdigest()[:32]
        return self.dir / f"{name}-{digest}.exe"

    def load(self, name: str, key: tuple):
        """The stored program for (name, key), or None."""
        from jax.experimental.serialize_executable import deserialize_and_load

        path = self._path(name, key)
        if not path.exists():
            return None
        try:
            blob, in_tree, out_tree, device_ids = pickle.loads(path.read_bytes())
            by_id = {d.id: d for d in jax.devices()}
            return deserialize_and_load(blob, in_tree, out_tree,
                                        execution_devices=[by_id[i] for i in device_ids])
        except Exception as e:  # noqa: BLE001 - a bad entry is rebuilt, never fatal
            log.warning("ignoring unreadable executable %s: %s", path, e)
            return None

    def save(self, name: str, key: tuple, compiled) -> None:
        from jax.experimental.serialize_executable import serialize

        path = self._path(name, key)
        try:
            # The devices it runs on: deserializing would otherwise assume all of them.
            device_ids = [d.id for d in compiled.runtime_executable().local_devices()]
            data = pickle.dumps((*serialize(compiled), device_ids))
            if not self.dir.exists():
                self.dir.mkdir(parents=True)
                self._prune()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)          # atomic: a reader sees all of a file or none
        except Exception as e:  # noqa: BLE001 - not caching only costs the next start time
            log.warning("could not store executable %s: %s", path, e)

    def _prune(self) -> None:
        """Every code change or config is a new fingerprint: keep the store's size bounded."""
        dirs = sorted((d for d in self.root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        for old in dirs[:-KEEP_FINGERPRINTS]:
            shutil.rmtree(old, ignore_errors=True)
