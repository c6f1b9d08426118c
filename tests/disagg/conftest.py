"""Worker processes shared by the multi-process tests, started once per session.

Loading a worker is the slow part (~15 s of CPU each), so the session starts one prefill and one
decode worker for test_multiprocess.py and test_structured_router.py (which share one router in
front of them, `cluster`) and, when test_faults.py is collected too, a second of each at the same
time; test_faults.py puts its own router in front of all of them, and runs last because it
SIGKILLs workers.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.disagg._cluster import CONFIG, spawn, spawn_router, stop, wait_ready


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.nodeid.startswith("tests/disagg/test_faults.py"))


@pytest.fixture(scope="session")
def workers(request, tmp_path_factory):
    """.prefill and .decode: lists of Procs, starting; .wait(): until all are ready."""
    tmp = tmp_path_factory.mktemp("workers")
    faults = any(i.nodeid.startswith("tests/disagg/test_faults.py") for i in request.session.items)
    count = 2 if faults else 1
    prefill = [spawn(tmp, "prefill") for _ in range(count)]
    decode = [spawn(tmp, "decode") for _ in range(count)]
    try:
        yield SimpleNamespace(prefill=prefill, decode=decode, wait=lambda: wait_ready(prefill + decode))
    finally:
        stop(prefill + decode)


@pytest.fixture(scope="session")
def cluster(workers, tmp_path_factory):
    """A router over the session's first prefill and decode workers, and the reference LLM."""
    from jaxserve.llm import LLM

    prefill, decode = workers.prefill[0], workers.decode[0]
    router = spawn_router(tmp_path_factory.mktemp("mp"), [prefill], [decode])
    llm = LLM(CONFIG)              # loads while the processes start
    workers.wait()
    wait_ready([router])
    yield SimpleNamespace(router=router, prefill=prefill, decode=decode, llm=llm)
    stop([router])
