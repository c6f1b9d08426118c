"""Every implementation of the two contracts in jaxserve/interfaces.py has each of its methods,
with the same parameter names (so a caller written against the Protocol works with all of them)."""
import inspect
import sys
from pathlib import Path

import pytest

from jaxserve.async_engine import AsyncEngine
from jaxserve.disagg.decode_worker import DecodeWorker
from jaxserve.disagg.engine import DisaggregatedEngine
from jaxserve.disagg.prefill_worker import PrefillWorker
from jaxserve.disagg.router import Router
from jaxserve.engine import Engine
from jaxserve.interfaces import ServingEngine, StepEngine

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from fake_engine import FakeEngine  # noqa: E402


def _methods(protocol) -> dict[str, object]:
    return {name: member for name, member in vars(protocol).items()
            if not name.startswith("_") and (callable(member) or isinstance(member, property))}


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("protocol, impl", [
    *[(StepEngine, c) for c in (Engine, DisaggregatedEngine, PrefillWorker, DecodeWorker, FakeEngine)],
    *[(ServingEngine, c) for c in (AsyncEngine, Router)],
], ids=lambda x: x.__name__)
def test_implements(protocol, impl):
    for name, member in _methods(protocol).items():
        assert hasattr(impl, name), f"{impl.__name__} lacks {protocol.__name__}.{name}"
        got = getattr(impl, name)
        if isinstance(member, property):
            assert isinstance(got, property), f"{impl.__name__}.{name} should be a property"
            continue
        assert _params(got) == _params(member), (
            f"{impl.__name__}.{name}{inspect.signature(got)} differs from the Protocol's "
            f"{inspect.signature(member)}")
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(member), name


def test_the_check_can_fail():
    class Partial:
        def step(self):
            return []
    with pytest.raises(AssertionError, match="lacks StepEngine"):
        test_implements(StepEngine, Partial)
