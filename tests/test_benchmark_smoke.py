"""The optimizer-step benchmark runs (timings are never checked: machines are noisy)."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "optimizer_step.py")


def test_benchmark_runs_in_quick_smoke_mode():
    out = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--smoke", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    impls = {(r["tree"], r["impl"]) for r in report["rows"]}
    assert {("big", "gradxform"), ("big", "optax"), ("many", "gradxform-packed")} <= impls
    for row in report["rows"]:
        assert row["median_ms"] > 0 and row["bytes_per_step"] > 0
        assert row["roofline_gbps"] > 0
    assert all("vs_optax" in r for r in report["rows"] if r["impl"] == "gradxform")
