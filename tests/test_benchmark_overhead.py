"""benchmarks/search_overhead.py runs end to end (both sides, the driver pinned), so it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.long
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin-driver needs 2 cores")
def test_the_overhead_benchmark_times_both_sides_and_prints_a_ratio(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_overhead.py"), "--trials", "6",
                          "--concurrency", "2", "--reuse", "yes", "--pin-driver"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"hyperlab\s+6 trials, reuse_actors=True:\s+[\d.]+ s", out.stderr)  # a search that completed
    line = re.search(r"6 trials, reuse_actors=True : bare Ray Tune \+ OptunaSearch\s+([\d.]+) s, hyperlab\s+([\d.]+) s, "
                     r"ratio ([\d.]+) .*extra driver CPU (-?[\d.]+) ms per result, (-?[\d.]+) ms per trial", out.stdout)
    assert line, out.stdout
    bare, ours, ratio, per_result, per_trial = map(float, line.groups())
    assert bare > 0 and ours > 0 and ratio == pytest.approx(ours / bare, rel=0.1)  # the times are printed to 0.1 s
    assert per_trial == pytest.approx(per_result * 10, abs=0.1)  # ten results a trial
    assert "driver on core" in out.stdout
