"""Every shipped config in configs/ loads and validates (the README points users at them)."""
from pathlib import Path

import pytest

from jaxserve.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"smollm2-135m.yaml", "smollm2-135m-disagg.yaml", "gemma3-270m.yaml",
                                         "tiny-random.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = load_config(path)
    assert config.model.source in ("smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m", "tiny-random")
    if "disagg" in path.name:
        assert config.disagg.mode == "disaggregated"
