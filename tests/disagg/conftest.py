"""Worker processes shared by the multi-process tests, started once per session.

Loading a worker is the slow part (~15 s of CPU each), so the session starts one prefill and one
decode worker for test_multiprocess.py and, when test_faults.py is collected too, a second of
each at the same time; each module puts its own router in front of the workers it uses.
test_faults.py runs last because it SIGKILLs workers.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.disagg._cluster import spawn, stop, wait_ready


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
