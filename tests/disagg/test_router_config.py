"""The router's worker URLs come from flags or from the config's disagg section."""
from __future__ import annotations

import pytest

from jaxserve import load_config
from jaxserve.cli import _parser, router_worker_urls


def _router_args(*flags: str):
    return _parser().parse_args(["serve", "--role", "router", *flags])


def test_urls_from_config_and_flags_win(tmp_path):
    cfg = tmp_path / "router.yaml"
    cfg.write_text("disagg:\n  prefill_urls: [http://p1:8101, http://p2:8101]\n"
                   "  decode_urls: [http://d1:8201]\n")
    config = load_config(cfg)
    assert router_worker_urls(_router_args(), config) == (
        ["http://p1:8101", "http://p2:8101"], ["http://d1:8201"])
    flags = _router_args("--prefill-url", "http://x:1", "--decode-url", "http://y:2")
    assert router_worker_urls(flags, config) == (["http://x:1"], ["http://y:2"])


def test_missing_workers_and_bad_urls_are_named():
    with pytest.raises(SystemExit, match="decode"):
        router_worker_urls(_router_args("--prefill-url", "http://x:1"), load_config())
    with pytest.raises(ValueError, match="disagg.decode_urls"):
        load_config(overrides={"disagg": {"decode_urls": ["127.0.0.1:8201"]}})
