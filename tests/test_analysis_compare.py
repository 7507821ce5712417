"""Comparing searches by hand: cross-domination of fronts, one reference, the hypervolume spread."""

import numpy as np
import pandas as pd
import pytest

from hyperlab.analysis import compare_searches, cross_domination
from hyperlab.analysis.compare import shared_objectives
from hyperlab.errors import UserError

MIN2 = {"a": "min", "b": "min"}


def frame(points, fidelity=None):
    df = pd.DataFrame(points, columns=list(MIN2))
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    if fidelity:
        df["fidelity"] = fidelity
    return df


def test_cross_domination_by_hand():
    fronts = {"A": frame([(1, 3), (3, 1)]), "B": frame([(2, 3.5), (0.5, 5), (3, 1)])}
    table = cross_domination(fronts, MIN2)
    # B's (2, 3.5) lies behind A's (1, 3); equal points (3, 1) do not dominate each other
    assert table["search"].tolist() == ["A", "A", "B", "B", "B"]
    assert table["n_dominating"].tolist() == [0, 0, 1, 0, 0]
    assert table["dominated_by"].tolist() == ["", "", "A", "", ""]


def test_compare_searches_by_hand():
    a = frame([(1, 3), (3, 1), (4, 4), (0, 0)], fidelity=["complete", "complete", "complete", "partial"])
    b = frame([(2, 2)])
    result = compare_searches({"A": a, "B": b}, MIN2, margin=0.0)
    # reference = worst complete values (margin 0): (4, 4); partial (0, 0) is ignored
    assert result["reference"] == [4.0, 4.0]
    # A: strips x 1..3 height 1, x 3..4 height 3 -> 5; B: 2 x 2 = 4
    assert result["hypervolume"] == pytest.approx({"A": 5.0, "B": 4.0})
    assert result["mean"] == pytest.approx(4.5) and result["std"] == pytest.approx(np.std([5, 4], ddof=1))
    assert result["fronts"]["A"]["run_id"].tolist() == ["r0", "r1"]
    assert result["domination"]["n_dominating"].tolist() == [0, 0, 0]


def test_compare_uses_the_searches_own_reference():
    """Each search records its fixed reference (its parent run's tag): compare measures from it, so its
    hypervolumes are the ones the searches logged; references that differ give the worst of them."""
    a = frame([(1, 3), (3, 1)], fidelity=["complete", "complete"])
    b = frame([(2, 2)], fidelity=["complete"])
    own = {"a": 5.0, "b": 5.0}
    result = compare_searches({"A": a, "B": b}, MIN2, references={"A": own, "B": dict(own)})
    assert result["reference"] == [5.0, 5.0] and result["reference_from"] == "the searches' own"
    # A: x 1..3 height 2, x 3..5 height 4 -> 12; B: 3 x 3 = 9
    assert result["hypervolume"] == pytest.approx({"A": 12.0, "B": 9.0})
    mixed = compare_searches({"A": a, "B": b}, {"a": "min", "b": "max"},
                             references={"A": {"a": 5.0, "b": 0.0}, "B": {"a": 6.0, "b": -1.0}})
    assert mixed["reference"] == [6.0, -1.0] and mixed["reference_from"] == "the worst of the searches' own"
    fallback = compare_searches({"A": a, "B": b}, MIN2, margin=0.0, references={"A": own, "B": None})
    assert fallback["reference"] == [3.0, 3.0] and fallback["reference_from"] == "the trials"


def test_hypervolume_at_equal_compute_by_hand(capsys):
    """Trials in the order they ended, each with its CPU-seconds: B spent 2 CPU-hours in all, A 3; at B's 2
    hours A had ended its first two trials only."""
    hours = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta([1, 2, 3], unit="h")
    a = frame([(1, 3), (3, 1), (0.5, 0.5)], fidelity=["complete"] * 3)
    a["end_time"], a["cost/cpu_seconds"] = hours, [3600, 3600, 3600]
    b = frame([(2, 2), (1, 1)], fidelity=["complete", "partial"])
    b["end_time"], b["cost/cpu_seconds"] = hours[:2], [3600, 3600]
    result = compare_searches({"A": a, "B": b}, MIN2, references={"A": {"a": 5.0, "b": 5.0}, "B": {"a": 5.0, "b": 5.0}})
    equal = result["at_equal_compute"]
    assert equal["kind"] == "cpu" and equal["hours"] == 2.0
    # A by then: (1, 3), (3, 1) -> 12 (its third trial, ending at hour 3, would make it 20.25); B: (2, 2) -> 9
    assert equal["hypervolume"] == pytest.approx({"A": 12.0, "B": 9.0}) and list(equal["hypervolume"]) == ["A", "B"]
    assert result["hypervolume"]["A"] == pytest.approx(20.25)
    from hyperlab.cli.analysis import _print_comparison

    _print_comparison(result, MIN2, {})
    printed = capsys.readouterr().out
    assert "common reference point (each search's own, as on its MLflow parent run): a=5, b=5" in printed
    assert "at equal compute (2 CPU-hours" in printed and "1. A: hypervolume 12\n  2. B: hypervolume 9\n" in printed
    a["cost/cpu_seconds"] = float("nan")
    assert compare_searches({"A": a.drop(columns="cost/cpu_seconds"), "B": b}, MIN2)["at_equal_compute"] is None


def test_searches_with_different_objectives_are_refused():
    assert shared_objectives({"A": MIN2, "B": dict(MIN2)}) == MIN2
    with pytest.raises(UserError, match="different objectives"):
        shared_objectives({"A": MIN2, "B": {"a": "min", "b": "max"}})


def test_search_quality_benchmark_measures_by_hand():
    """benchmarks/search_quality.py's measures: the front of the complete trials that ended before the
    compute passed the mark, and the share of the smallest tenth of the trials started that completed."""
    import importlib.util
    import math

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("search_quality", REPO / "benchmarks" / "search_quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    trials = pd.DataFrame({"n_params": [100.0, 1000.0, 10.0, 50.0], "bpc": [3.0, 2.0, 5.0, 1.0],
                           "complete": [True, True, False, True], "cpu_seconds": [10.0, 20.0, 5.0, 100.0]})
    reference = [10_000.0, 6.0]
    # by 35 CPU-seconds the first three ended; complete: (100, 3) and (1000, 2), parameters in decades
    expected = (math.log10(1000) - 2) * (6 - 3) + (4 - math.log10(1000)) * (6 - 2)
    assert quality.hypervolume_at(trials, reference, 35.0) == pytest.approx(expected)
    assert quality.hypervolume_at(trials, reference, 9.0) == 0.0
    assert quality.smallest_decile_completed(trials) == 0.0  # the smallest, 10 parameters, was stopped


def test_sampler_pruning_benchmark_spends_the_compute_it_is_given():
    """benchmarks/sampler_pruning.py: each simulated search spends its evaluations (the last trial may run
    past them), stops trials at MO-ASHA's rungs, and its NSGA-II generations advance on stopped trials."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("sampler_pruning", REPO / "benchmarks" / "sampler_pruning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.n_params({"hidden": 32, "hyper": 16, "n_z": 4}) == 4 * 32 * 82 + 4 * 16 * 80 + 8 * 4 * 48 + 32 * 50
    for sampler in ("random", "tpe", "nsga2 early-stopped"):
        run = bench.search(sampler, "pruned", seed=1, evaluations=90, population=4)
        assert 90 <= run["spent"] < 90 + bench.MAX_EVALUATIONS
        assert run["complete"] < run["trials"] and run["spent"] < run["trials"] * bench.MAX_EVALUATIONS  # some stopped
        assert 0 < run["hv"] < 1 and 0 < run["log_hv"] < 1
    assert run["generation"] == (run["trials"] - 1) // 4  # one trial at a time: a generation every four trials
