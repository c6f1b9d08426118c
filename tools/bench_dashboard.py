"""What watching costs: a serving benchmark with the dashboard closed and open, in turn, against
one running jaxserve server, and a screenshot of the dashboard during the load.

    jaxserve serve --config configs/smollm2-135m.yaml --port 8000 &
    python tools/bench_dashboard.py --base-url http://127.0.0.1:8000 --rounds 2 \
        --screenshot docs/dashboard-smollm2.png --json /tmp/bench_dashboard.json \
        -- --concurrency 32 --num-prompts 64 --input-len 128 --output-len 64

Each round runs tools/bench_serving.py twice with the arguments after `--`: closed (nobody reads
the state feed) and open (`--dashboard-reader`: one /debug/state/stream connection, as a browser
showing /dashboard keeps). The pair's ratio open/closed of output tokens/s is printed per round,
with the median; this machine's speed drifts, so only ratios within a pair are worth quoting.
With --screenshot, headless Chromium (Debian's `chromium`) opens /dashboard during the first open
run, `--screenshot-after` seconds into it, and saves what it shows. It opens `?poll=1` (the page
fetches /debug/state each second): Chromium's one-shot screenshot waits for the network to be
idle, which a held event stream never is.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def screenshot(url: str, path: Path, delay_s: float, budget_ms: int = 4000) -> None:
    """After delay_s, a headless Chromium screenshot of url (given budget_ms of page time to draw)."""
    time.sleep(delay_s)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print("no chromium: no screenshot (apt-get install chromium)")
        return
    profile = tempfile.mkdtemp(prefix="jaxserve-shot-")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", "--window-size=1400,1150", "--hide-scrollbars",
                    f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url],
                   capture_output=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    print(f"screenshot: {path} ({path.stat().st_size if path.exists() else 0} bytes)")


def run_bench(base_url: str, extra: list[str], open_: bool, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "tools" / "bench_serving.py"), "--base-url", base_url,
           "--out", str(out), "--plot", str(out.with_suffix(".png"))] + extra
    if open_:
        cmd.append("--dashboard-reader")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--screenshot-after", type=float, default=15.0, help="seconds into the first open run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(own)
    work = Path(tempfile.mkdtemp(prefix="bench_dashboard-"))
    rows = []
    for r in range(args.rounds):
        row = {}
        for state in ("closed", "open"):
            shot = None
            if state == "open" and r == 0 and args.screenshot:
                shot = threading.Thread(target=screenshot, args=(f"{args.base_url}/dashboard?poll=1",
                                                                 args.screenshot, args.screenshot_after))
                shot.start()
            summary = run_bench(args.base_url, extra, state == "open", work / f"{state}{r}.json")
            if shot is not None:
                shot.join()
            row[state] = summary["output_throughput_tps"]
            print(f"round {r + 1} {state:6s} output {row[state]:.1f} tok/s, "
                  f"ITL p99 {summary.get('itl_s', {}).get('p99', float('nan')) * 1000:.0f} ms", flush=True)
        row["open_over_closed"] = row["open"] / row["closed"]
        print(f"round {r + 1} open/closed {row['open_over_closed']:.3f}", flush=True)
        rows.append(row)
    median = statistics.median(r["open_over_closed"] for r in rows)
    print(f"median open/closed output tokens/s over {len(rows)} rounds: {median:.3f}")
    result = {"rounds": rows, "median_open_over_closed": median, "bench_serving_args": extra}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
