"""Hypervolumes worked out on paper, a brute-force grid cross-check, and the reference-point rules."""

import itertools

import numpy as np
import pandas as pd
import pytest

from hyperlab.analysis import common_reference, hypervolume, search_hypervolume, search_reference
from hyperlab.errors import UserError


def test_two_dimensional_staircase():
    # boxes [1,4]x[3,4] + [2,4]x[2,4] + [3,4]x[1,4] = 3 + 4 + 3 - (2 + 1 + 2) + 1 = 6
    points = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume(points, (4, 4), ["min", "min"]) == pytest.approx(6.0)
    # duplicates and dominated points add nothing
    assert hypervolume(points + [(2, 2), (3, 3)], (4, 4), ["min", "min"]) == pytest.approx(6.0)


def test_points_not_strictly_better_than_reference_contribute_nothing():
    assert hypervolume([(0, 4), (5, 0), (4, 4)], (4, 4), ["min", "min"]) == 0.0
    assert hypervolume([(0, 4), (3, 3)], (4, 4), ["min", "min"]) == pytest.approx(1.0)
    assert hypervolume(np.empty((0, 2)), (4, 4), ["min", "min"]) == 0.0


def test_min_max_mix():
    # params min, accuracy max, reference (3, 0.5): (2-1)*(0.9-0.5) + (3-2)*(0.95-0.5) = 0.85
    assert hypervolume([(1, 0.9), (2, 0.95)], (3, 0.5), ["min", "max"]) == pytest.approx(0.85)
    # senses swapped, reference (0, 1): (2-1)*(1-0.95) + (1-0)*(1-0.9) = 0.15
    assert hypervolume([(1, 0.9), (2, 0.95)], (0, 1.0), ["max", "min"]) == pytest.approx(0.15)


def test_three_dimensional_boxes():
    assert hypervolume([(1, 1, 1)], (2, 2, 2), ["min"] * 3) == pytest.approx(1.0)
    # three 2x1x1 boxes meeting in the unit cube [1,2]^3: 6 - 3*1 + 1 = 4
    points = [(0, 1, 1), (1, 0, 1), (1, 1, 0)]
    assert hypervolume(points, (2, 2, 2), ["min"] * 3) == pytest.approx(4.0)
    # the same as maxima, mirrored through the origin
    assert hypervolume(-np.array(points), (-2, -2, -2), ["max"] * 3) == pytest.approx(4.0)


def test_four_dimensional_box():
    assert hypervolume([(0, 0, 0, 0), (0.5, 0.5, 0.5, 0.5)], (1, 2, 3, 4), ["min"] * 4) == pytest.approx(24.0)


def test_bad_reference_is_a_user_error():
    with pytest.raises(UserError, match="reference"):
        hypervolume([(1, 1)], (2, np.nan), ["min", "min"])
    with pytest.raises(UserError, match="directions"):
        hypervolume([(1, 1)], (2, 2), ["min", "up"])


def grid_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Sum the cells of the grid of unique coordinates whose lower corner some point dominates."""
    axes = [np.unique(np.append(points[:, j], reference[j])) for j in range(points.shape[1])]
    volume = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        corner = np.array([axes[j][i] for j, i in enumerate(cell)])
        if (points <= corner).all(axis=1).any():
            volume += np.prod([axes[j][i + 1] - axes[j][i] for j, i in enumerate(cell)])
    return volume


@pytest.mark.parametrize("m", [2, 3, 4])
def test_matches_grid_brute_force(m):
    rng = np.random.default_rng(10 + m)
    for _ in range(15):
        n = int(rng.integers(1, 10))
        points = rng.integers(0, 5, size=(n, m)) + rng.choice([0.0, 0.5], size=(n, m))
        reference = np.full(m, 5.0)
        expected = grid_hypervolume(points[(points < reference).all(1)], reference) if (points < reference).all(1).any() else 0.0
        assert hypervolume(points, reference, ["min"] * m) == pytest.approx(expected)


def test_hundred_thousand_points():
    """The size benchmarks/pareto_speed.py times; here only the value."""
    points = np.random.default_rng(1).random((100_000, 2))
    volume = hypervolume(points, (1.0, 1.0), ["min", "min"])
    assert 0.99 < volume < 1.0  # 100,000 uniform points leave almost nothing undominated


def test_common_reference_pushes_out_worst_complete_values():
    objectives = {"model/n_params": "min", "val/bpc": "min", "val/acc": "max"}
    a = pd.DataFrame({"model/n_params": [1e4, 1e6, 1e9], "val/bpc": [1.5, 1.2, 9.0], "val/acc": [0.8, 0.9, 0.0],
                      "fidelity": ["complete", "complete", "partial"]})
    b = pd.DataFrame({"model/n_params": [1e5], "val/bpc": [2.0], "val/acc": [0.85]})
    reference = common_reference([a, b], objectives, margin=0.1)
    # params: 1e6 pushed out by 0.1 of two decades; bpc: 2.0 + 0.1 * 0.8; acc: 0.8 - 0.1 * 0.1
    assert reference == pytest.approx([1e6 * 10 ** 0.2, 2.08, 0.79])
    # a single point: zero range -> a tenth of a decade, a tenth of the value
    assert common_reference([b], objectives) == pytest.approx([1e5 * 10 ** 0.1, 2.2, 0.765])
    assert search_reference(objectives, a) == pytest.approx([1e6 * 10 ** 0.2, 1.53, 0.0])
    bounded = search_reference(objectives, a, bounds={"model/n_params": 2e6})
    assert bounded == pytest.approx([2e6, 1.53, 0.0])
    everything = {"model/n_params": 2e6, "val/bpc": np.log2(50)}  # known bounds need no trial at all
    assert search_reference(objectives, a.iloc[:0], bounds=everything) == pytest.approx([2e6, np.log2(50), 0.0])
    with pytest.raises(UserError, match="not objectives"):
        search_reference(objectives, a, bounds={"test/bpc": 5.0})
    with pytest.raises(UserError, match="no complete trial"):
        common_reference([a[a["fidelity"] == "partial"]], objectives)


def test_search_hypervolume_measures_parameters_in_decades():
    objectives = {"model/n_params": "min", "val/bpc": "min"}
    df = pd.DataFrame({"model/n_params": [1e4, 1e3], "val/bpc": [1.0, 0.5], "fidelity": ["complete", "failed"]})
    # log10: point (4, 1) against (6, 2): 2 decades x 1 bpc; the failed trial is left out
    assert search_hypervolume(df, objectives, [1e6, 2.0]) == pytest.approx(2.0)


def test_search_hypervolume_three_objectives():
    objectives = {"model/n_params": "min", "val/bpc": "min", "val/acc": "max"}
    df = pd.DataFrame({"model/n_params": [1e4, 1e4], "val/bpc": [1.0, 1.5], "val/acc": [0.9, 0.95]})
    # boxes in (decades, bpc, acc) against (5, 2, 0): 1 x 1 x 0.9 and 1 x 0.5 x 0.95, overlap 1 x 0.5 x 0.9
    assert search_hypervolume(df, objectives, [1e5, 2.0, 0.0]) == pytest.approx(0.9 + 0.475 - 0.45)
