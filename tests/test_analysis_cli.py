"""`hyperlab pareto`, `list`, `compare` on a real MLflow store; the report files; a light import."""

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from hyperlab.analysis import hypervolume, write_search_report
from hyperlab.analysis.figures import point_kinds
from hyperlab.cli import main
from hyperlab.cli.analysis import print_search
from hyperlab.tracking import load_search

from conftest import OBJECTIVES, shared_store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


def search_runs(uri: str, name: str) -> pd.DataFrame:
    """The complete trials of a search straight from mlflow.search_runs (no hyperlab reader)."""
    import os

    previous, variable = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=[name], filter_string="tags.`hyperlab.role` = 'trial'")
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:  # set_tracking_uri sets the variable too: leave the environment as it was
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable
    return runs[runs["tags.hyperlab.fidelity"] == "complete"]


def brute_front(points: np.ndarray) -> np.ndarray:
    """Mask of the rows no other row dominates (all objectives minimised), O(n^2)."""
    le = (points[None, :, :] <= points[:, None, :]).all(2)
    lt = (points[None, :, :] < points[:, None, :]).any(2)
    return ~(le & lt).any(1)


def staircase_area(points: np.ndarray, reference) -> float:
    """2-D dominated area by summing vertical strips between consecutive distinct x values."""
    xs = np.unique(np.append(points[:, 0], reference[0]))
    return sum((x1 - x0) * max(0.0, reference[1] - points[points[:, 0] <= x0, 1].min(initial=np.inf))
               for x0, x1 in zip(xs[:-1], xs[1:]))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_pareto_writes_the_front_of_search_runs(store, tmp_path, capsys, suffix):
    _, uri = store
    out = tmp_path / f"front{suffix}"
    assert main(["pareto", "alpha", "--tracking-uri", uri, "--out", str(out)]) == 0
    front = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    runs = search_runs(uri, "alpha")
    points = runs[["metrics.model/n_params", "metrics.val/bpc"]].to_numpy()
    expected = runs[brute_front(points)].sort_values("metrics.model/n_params")
    assert front["run_id"].tolist() == expected["run_id"].tolist()
    np.testing.assert_allclose(front["val/bpc"], expected["metrics.val/bpc"])
    assert front["knee"].sum() == 1 and front["paper_model"].notna().all()  # dataset ptb: a paper table
    printed = capsys.readouterr().out
    assert f"Pareto front of alpha: {len(front)} of 18 complete trials" in printed
    assert "trials: 18 complete, 3 stopped early or interrupted, 3 failed" in " ".join(printed.split())
    assert all(run_id[:12] in printed for run_id in expected["run_id"])


def test_pareto_errors(store, tmp_path, capsys):
    _, uri = store
    assert main(["pareto", "alpha", "--tracking-uri", uri, "--out", str(tmp_path / "front.xlsx")]) == 2
    assert "expected a .parquet or .csv" in capsys.readouterr().err
    assert main(["pareto", "nope", "--tracking-uri", uri]) == 2
    assert "known searches: alpha, beta, gamma" in capsys.readouterr().err


def test_list(store, capsys):
    _, uri = store
    assert main(["list", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    alpha = next(line for line in lines if "alpha" in line).split("│")
    assert [cell.strip() for cell in alpha[2:6]] == ["FINISHED", "18", "3", "3"]
    best = search_runs(uri, "alpha")["metrics.val/bpc"].min()
    assert alpha[6].strip() == "0" and f"val/bpc min {best:.6g}" in alpha[8]
    gamma = next(line for line in lines if "gamma" in line).split("│")
    assert [cell.strip() for cell in gamma[3:7]] == ["2", "0", "0", "1"]  # trial 0 (failed) was deleted


def test_print_search_counts_complete_trials(store, capsys):
    _, uri = store
    assert print_search("alpha", uri) == 18
    assert "Pareto front of alpha" in capsys.readouterr().out


def test_compare(store, tmp_path, capsys):
    _, uri = store
    assert main(["compare", "alpha", "beta", "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    runs = {name: search_runs(uri, name) for name in ("alpha", "beta")}
    logged = {name: np.column_stack([np.log10(r["metrics.model/n_params"]), r["metrics.val/bpc"]])
              for name, r in runs.items()}
    everything = np.vstack(list(logged.values()))
    worst, best = everything.max(0), everything.min(0)
    reference = worst + 0.1 * (worst - best)
    assert f"model/n_params={10 ** reference[0]:.6g}, val/bpc={reference[1]:.6g}" in printed
    volumes = {name: staircase_area(points, reference) for name, points in logged.items()}
    for name, volume in volumes.items():
        assert f"{name}: hypervolume {volume:.6g}" in printed
    mean, std = np.mean(list(volumes.values())), np.std(list(volumes.values()), ddof=1)
    assert f"spread over 2 searches (h1): hypervolume {mean:.6g} ± {std:.3g}" in printed
    table = pd.read_csv(tmp_path / "domination.csv", keep_default_na=False)
    fronts = {name: points[brute_front(points)] for name, points in logged.items()}
    alpha_rows = table[table["search"] == "alpha"]
    dominated = (brute_front(np.vstack([fronts["beta"], fronts["alpha"]]))[len(fronts["beta"]):] == False)  # noqa: E712
    assert sorted(alpha_rows["n_dominating"].tolist()) == sorted(dominated.astype(int).tolist())
    assert set(alpha_rows.loc[alpha_rows["n_dominating"] == 1, "dominated_by"]) <= {"beta"}
    assert (tmp_path / "fronts.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "alpha front" in (tmp_path / "fronts.html").read_text()


def test_compare_needs_two_searches(store, capsys):
    _, uri = store
    assert main(["compare", "alpha", "--tracking-uri", uri]) == 2
    assert "two or more" in capsys.readouterr().err


def test_write_search_report(store, tmp_path):
    _, uri = store
    df = load_search("alpha", uri)
    result = write_search_report(df, OBJECTIVES, tmp_path)
    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    html = (tmp_path / "tradeoff.html").read_text()
    assert '"name":"front"' in html and '"name":"partial"' in html
    assert 'src="https://cdn.plot.ly' not in html and len(html) > 1_000_000  # plotly.js travels with it
    csv, parquet = pd.read_csv(tmp_path / "front.csv"), pd.read_parquet(tmp_path / "front.parquet")
    assert csv["run_id"].tolist() == parquet["run_id"].tolist() == result["front"]["run_id"].tolist()
    complete = df[df["fidelity"] == "complete"]  # log10 parameters against bpc, both minimised
    points = np.column_stack([np.log10(complete["model/n_params"]), complete["val/bpc"]])
    reference = [np.log10(result["reference"][0]), result["reference"][1]]
    assert result["hypervolume"] == pytest.approx(hypervolume(points, reference, ["min", "min"]))
    fixed = write_search_report(df.iloc[:10], OBJECTIVES, tmp_path, reference=result["reference"])
    assert fixed["reference"] == result["reference"] and 0 < fixed["hypervolume"] <= result["hypervolume"]


def test_import_loads_neither_torch_nor_ray():
    code = ("import sys, hyperlab.analysis; light = sorted(m for m in ('torch', 'ray', 'mlflow', 'matplotlib', "
            "'plotly') if m in sys.modules); import hyperlab.cli.analysis; "
            "print(light, sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"  # `hyperlab pareto` starts without them too


def test_point_kinds_in_figures():
    df = pd.DataFrame({"model/n_params": [1e4, 1e5, 2e5, 1e3, 1e3, 1e3],
                       "val/bpc": [1.5, 1.2, 1.3, 1.0, 1.0, np.nan],
                       "fidelity": ["complete", "complete", "complete", "partial", "running", "complete"]})
    kinds = point_kinds(df, OBJECTIVES).tolist()
    assert kinds == ["front", "front", "dominated", "partial", "running", "failed"]


def test_mnist_paper_counts_are_whole_model_counts_of_the_paper_architecture():
    from hyperlab.analysis.paper import paper_table
    from hyperlab.models import DataShape, MnistConvNetConfig, size_model

    table = paper_table("mnist")
    counts = dict(zip(table["model"], table["params"]))
    for hyper, row in ((False, "convnet, ordinary conv2"), (True, "convnet, generated conv2 Nz=4")):
        assert counts[row] == size_model(MnistConvNetConfig(hyper=hyper), DataShape(num_classes=10))["total"]
