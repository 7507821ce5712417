"""Pareto ranks worked out by hand, the knee, the paper's closest result, and a brute-force cross-check."""


import numpy as np
import pandas as pd
import pytest

from hyperlab.analysis import closest_paper_result, knee, non_dominated_ranks, paper_table, pareto_front
from hyperlab.errors import UserError

MIN2 = {"a": "min", "b": "min"}


def ranks_of(rows, objectives):
    df = pd.DataFrame(rows, columns=list(objectives))
    return pareto_front(df, objectives).tolist()


def test_two_objectives_by_hand_with_duplicates():
    # A(1,5) B(2,3) D(4,1) are the front; E duplicates B (same rank); C(3,4) is behind B; F behind C
    rows = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 5)]
    assert ranks_of(rows, MIN2) == [1, 1, 2, 1, 1, 3]


def test_ties_in_one_coordinate_dominate():
    # equal in one objective, better in the other: dominated
    assert ranks_of([(1, 3), (1, 2), (2, 1), (3, 1)], MIN2) == [2, 1, 1, 2]


def test_min_and_max_mixed():
    objectives = {"model/n_params": "min", "val/acc": "max"}
    rows = [(100, 0.90), (200, 0.95), (150, 0.85), (300, 0.95)]
    assert ranks_of(rows, objectives) == [1, 1, 2, 2]
    flipped = {"model/n_params": "max", "val/acc": "min"}  # same points, opposite senses
    assert ranks_of(rows, flipped) == [2, 2, 1, 1]


def test_three_objectives_by_hand():
    rows = [(1, 2, 3), (2, 1, 3), (3, 3, 1), (2, 2, 3), (3, 3, 3), (1, 2, 3)]
    assert ranks_of(rows, {"a": "min", "b": "min", "c": "min"}) == [1, 1, 1, 2, 3, 1]
    assert ranks_of(rows, {"a": "max", "b": "max", "c": "max"}) == [3, 3, 2, 2, 1, 3]


def test_only_complete_finite_trials_are_ranked():
    df = pd.DataFrame({"a": [1.0, 0.0, 2.0, np.nan], "b": [1.0, 0.0, 0.5, 0.0],
                       "fidelity": ["complete", "partial", "complete", "complete"]})
    ranks = pareto_front(df, MIN2)
    assert ranks.dtype == "Int64"
    assert ranks[[0, 2]].tolist() == [1, 1] and ranks.isna().tolist() == [False, True, False, True]
    assert pareto_front(df, MIN2, complete_only=False).tolist()[:3] == [2, 1, 2]


def test_bad_objectives_are_user_errors():
    df = pd.DataFrame({"a": [1.0], "b": [2.0]})
    with pytest.raises(UserError, match="not in the table"):
        pareto_front(df, {"a": "min", "val/bpc": "min"})
    with pytest.raises(UserError, match="'min' or 'max'"):
        pareto_front(df, {"a": "min", "b": "lowest"})


def brute_ranks(points: np.ndarray) -> np.ndarray:
    """O(n^2) per front: peel the points no remaining point dominates."""
    n = len(points)
    ranks, rank = np.zeros(n, dtype=int), 0
    while (ranks == 0).any():
        rank += 1
        left = np.flatnonzero(ranks == 0)
        for i in left:
            dominated = any((points[j] <= points[i]).all() and (points[j] < points[i]).any() for j in left)
            if not dominated:
                ranks[i] = -rank  # mark after the pass so this front does not shadow itself
        ranks[ranks < 0] *= -1
    return ranks


@pytest.mark.parametrize("m", [2, 3, 4])
def test_ranks_match_brute_force(m):
    rng = np.random.default_rng(m)
    for _ in range(25):
        n = int(rng.integers(1, 60))
        points = rng.integers(0, 6, size=(n, m)).astype(float)  # small range: many ties and duplicates
        np.testing.assert_array_equal(non_dominated_ranks(points), brute_ranks(points))


def test_hundred_thousand_points_rank():
    """The size benchmarks/pareto_speed.py times; here only the front."""
    points = np.random.default_rng(0).random((100_000, 2))
    ranks = non_dominated_ranks(points)
    front = points[ranks == 1]
    # every front point is undominated: checked against all points, in chunks
    for chunk in np.array_split(front, max(1, len(front) // 50)):
        dominated = ((points[None] <= chunk[:, None]).all(2) & (points[None] < chunk[:, None]).any(2)).any(1)
        assert not dominated.any()


def test_knee_uses_log_parameter_counts():
    objectives = {"model/n_params": "min", "val/bpc": "min"}
    front = pd.DataFrame({"model/n_params": [1e4, 1e5, 1e6, 1e7], "val/bpc": [2.0, 1.2, 1.1, 1.0]},
                         index=[10, 11, 12, 13])
    # log10 x: 0, 1/3, 2/3, 1; y: 1, .2, .1, 0 -> distance to x + y = 1 largest at the second point
    assert knee(front, objectives) == 11
    linear = {"a": "min", "b": "min"}  # linear x: 0, .009, .09, 1 -> the third point is farthest
    assert knee(front.set_axis(["a", "b"], axis=1), linear) == 12


def test_knee_with_a_maximised_metric():
    objectives = {"model/n_params": "min", "test/acc": "max"}
    front = pd.DataFrame({"model/n_params": [1e3, 1e4, 1e6], "test/acc": [0.5, 0.95, 0.99]})
    assert knee(front, objectives) == 1


def test_closest_paper_result():
    table = paper_table("char-ptb")
    row = pd.Series({"model/n_params": 4.9e6, "val/bpc": 1.29})
    # HyperLSTM 1000 (4.91M, 1.296): metric gap .006 / range .102; LN HyperLSTM (1.281): .009 / .102
    best = closest_paper_result(row, table, "val/bpc")
    assert best["model"] == "HyperLSTM 1000" and best["value"] == 1.296
    assert best["distance"] == pytest.approx(np.hypot(np.log10(4.91 / 4.9), 0.006 / 0.102))
    assert closest_paper_result(row, table) == best  # the metric found from the row
    # enwik8 (test bpc only): LN HyperLSTM 1800 (18.78M, 1.353) is nearest in log params and scaled bpc
    enwik8 = closest_paper_result(row.rename({"val/bpc": "test/bpc"}), paper_table("enwik8"), "test/bpc")
    assert enwik8["model"] == "LN HyperLSTM 1800" and enwik8["params"] == 18.78e6
    cifar = closest_paper_result(pd.Series({"model/n_params": 1e5, "val/acc": 0.9}), paper_table("cifar10"), "val/acc")
    assert cifar["model"] == "Hyper WRN-40-1" and cifar["value"] == pytest.approx(0.9198)
    assert paper_table("text8") is None
