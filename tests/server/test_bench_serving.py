"""tools/bench_serving.py runs end to end against a live (fake-engine) server and writes its JSON."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import fake_config, live_server
from fake_engine import FakeEngine

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_serving.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_serving_fixed_concurrency_and_poisson(tmp_path):
    bench = _bench_module()
    config = fake_config()
    with live_server(FakeEngine(config, step_s=0.002), config) as live:
        common = ["--base-url", live.url, "--num-prompts", "12", "--input-len", "40", "--output-len", "6",
                  "--plot", str(tmp_path / "lat.png")]
        s = bench.main(common + ["--concurrency", "4", "--out", str(tmp_path / "a.json")])
        assert s["completed"] == 12 and s["failed"] == 0
        assert s["total_output_tokens"] == 12 * 6
        assert 0 < s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] <= s["e2e_s"]["p99"]
        assert s["goodput_rps"] <= s["request_throughput_rps"]
        sizes = [r["prompt_tokens"] for r in json.loads((tmp_path / "a.json").read_text())["requests"]]
        assert all(n <= 41 for n in sizes) and sum(sizes) / len(sizes) > 30, str(sizes)
        s = bench.main(common + ["--request-rate", "50", "--endpoint", "chat", "--out", str(tmp_path / "b.json")])
        assert s["completed"] == 12 and s["output_throughput_tps"] > 0


@pytest.mark.slow
def test_bench_serving_structured_both_on_the_real_engine(real_server, tmp_path):
    """Constrained and unconstrained runs on the same prompts; outputs that stop fit their schema,
    the unconstrained twin gets the same token counts, and the host mask time comes from /metrics."""
    bench = _bench_module()
    s = bench.main(["--base-url", real_server.url, "--num-prompts", "4", "--input-len", "24",
                    "--output-len", "48", "--concurrency", "4", "--structured", "both",
                    "--out", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")])
    con, unc = s["constrained"], s["unconstrained"]
    assert con["completed"] == unc["completed"] == 4
    assert con["structured"]["invalid"] == 0 and con["structured"]["valid"] == con["structured"]["finished_stop"]
    assert con["structured"]["schemas"] == sorted(bench.STRUCTURED_SCHEMAS)
    assert unc["total_output_tokens"] == con["total_output_tokens"] and unc["structured"] is None
    assert con["grammar_mask"]["batches"] > 0 and con["grammar_mask"]["ms_per_batch"] > 0
    assert unc["grammar_mask"] is None
    assert s["constrained_over_unconstrained"] > 0
    body = {}
    bench.constrain(body, "order", "json_schema")
    assert body == {"json_schema": bench.STRUCTURED_SCHEMAS["order"]}
