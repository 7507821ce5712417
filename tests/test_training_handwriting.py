"""The handwriting task in the training core, on generated pen lines in IAM-OnDB's file layout: the
paper's log-loss against the model scored line by line, falling losses, exact resume, divergence, and
the config's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_models_handwriting import forms, line_xml

from hyperlab.config_io import validate
from hyperlab.data import strokes
from hyperlab.errors import ConfigError
from hyperlab.metrics import METRICS, TASK_METRICS
from hyperlab.training import TrainConfig, checkpoint, fit, load_model
from hyperlab.training.handwriting import HandwritingTask

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def write_lines(root, n_train: int = 12, n_valid: int = 3, points: int = 320, seed: int = 0):
    """Loops of a pen, as IAM-OnDB's ``lineStrokes/`` holds them: each line a few strokes of circles
    with a random radius and speed (structure a small model learns), ``points`` points in all."""
    rng = np.random.default_rng(seed)
    folder = root / "iam-ondb" / "lineStrokes"
    for form in forms(False, n_train) + forms(True, n_valid):
        radius, speed = rng.uniform(20, 60), rng.uniform(0.2, 0.4)
        t = np.arange(points)
        x = (t * 3 + radius * np.cos(t * speed)).astype(int)
        y = (radius * np.sin(t * speed)).astype(int)
        cuts = np.sort(rng.choice(np.arange(40, points - 40), size=3, replace=False))
        strokes_points = [list(zip(xs.tolist(), ys.tolist())) for xs, ys in zip(np.split(x, cuts), np.split(y, cuts))]
        target = folder / form[:3] / form
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{form}-01.xml").write_text(line_xml(strokes_points))
    return str(root)


def hw_config(**overrides) -> TrainConfig:
    base = {"task": "handwriting", "seed": 0, "device": "cpu",
            "data": {"dataset": "iam_ondb", "batch_size": 4, "max_points": 120},
            "model": {"name": "handwriting_rnn", "cell": "hyperlstm", "hidden_size": 24, "hyper_size": 8, "n_z": 4},
            "optim": {"lr": 0.005, "clip": 1.0},
            "schedule": {"steps": 12, "eval_every": 4, "test": False}}
    return validate(TrainConfig, base).with_overrides(overrides)


def test_the_log_loss_is_nats_per_line_of_the_model_scored_line_by_line(tmp_path):
    data_dir = write_lines(tmp_path)
    config = hw_config()
    result = fit(config, workdir=tmp_path / "run", data_dir=data_dir)
    model = load_model(tmp_path / "run" / "checkpoint-12", config, data_dir)
    lines = strokes.load_strokes(data_dir).lines("valid")
    assert len(lines) == 3
    with torch.no_grad():  # each whole line alone: no padding, no batching
        nll = [model.sequence_nll(torch.from_numpy(np.array(line))[None]).item() for line in lines]
    assert result["val/nll"] == pytest.approx(np.mean(nll), rel=1e-5)
    assert result["val/nll_per_point"] == pytest.approx(np.sum(nll) / sum(len(line) - 1 for line in lines), rel=1e-5)
    assert {"val/nll", "val/nll_per_point"} <= set(TASK_METRICS["handwriting"]) <= set(METRICS)
    assert METRICS["val/nll"] == "min"


def test_loss_falls_and_resume_continues_exactly(tmp_path):
    data_dir = write_lines(tmp_path)
    config = hw_config(**{"schedule.steps": 24, "schedule.eval_every": 6})  # 3 batches an epoch: 8 epochs
    straight, resumed = [], []
    fit(config, lambda m, p: straight.append(m), workdir=tmp_path / "straight", data_dir=data_dir)

    class Stop(Exception):
        pass

    def stop(metrics, path):
        if metrics["step"] == 12:
            raise Stop
    with pytest.raises(Stop):
        fit(config, stop, workdir=tmp_path / "cut", data_dir=data_dir)
    fit(config, lambda m, p: resumed.append(m), workdir=tmp_path / "cut", data_dir=data_dir,
        resume_from=tmp_path / "cut" / "checkpoint-12")

    assert [m["step"] for m in straight] == [6, 12, 18, 24]
    assert straight[-1]["val/nll"] < straight[0]["val/nll"] - 0.1 * abs(straight[0]["val/nll"])
    assert straight[-1]["train/loss"] < straight[0]["train/loss"]
    for key in ("train/loss", "val/nll", "val/nll_per_point"):
        assert [m[key] for m in resumed] == [m[key] for m in straight]
    a = checkpoint.load_model_state(tmp_path / "straight" / "checkpoint-24")
    b = checkpoint.load_model_state(tmp_path / "cut" / "checkpoint-24")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_poisoned_batch_ends_the_run_as_diverged(tmp_path, monkeypatch):
    data_dir = write_lines(tmp_path)
    clean = HandwritingTask.train_loss

    def poisoned(self, model, step):
        loss, units = clean(self, model, step)
        return (loss * float("nan") if step == 1 else loss), units
    monkeypatch.setattr(HandwritingTask, "train_loss", poisoned)
    result = fit(hw_config(), workdir=tmp_path / "run", data_dir=data_dir)
    assert result["outcome"] == "diverged" and result["step"] == 4 and "val/nll" not in result
    assert not math.isfinite(result["train/loss"]) and checkpoint.latest(tmp_path / "run") is None


@pytest.mark.parametrize("overrides, key", [
    ({"data.dataset": "ptb"}, "data.dataset"),            # a char corpus
    ({"data.dataset": "/some/folder"}, "data.dataset"),   # IAM-OnDB is found by name, under the data directory
    ({"model.name": "char_rnn"}, "model."),               # a model another task trains
    ({"data.max_points": 1}, "data.max_points"),
])
def test_configs_a_handwriting_run_cannot_train_are_refused(overrides, key):
    with pytest.raises(ConfigError) as caught:
        hw_config(**overrides)
    assert len(caught.value.problems) == 1 and caught.value.problems[0][0].startswith(key)


def test_train_then_sample_writes_the_handwriting_and_its_activity(mlflow_store, tmp_path):
    """`hyperlab train` a handwriting pipeline, then `hyperlab sample` its run: the strokes as SVG and PNG,
    the weight change per gate and the point-by-point page, all from the seeded sample."""
    import re

    import mlflow
    import yaml

    from hyperlab.analysis.strokes import to_strokes, weight_change
    from hyperlab.cli import main
    from hyperlab.models.handwriting import generate

    data_dir = write_lines(tmp_path)
    pipeline = tmp_path / "hw.yaml"
    pipeline.write_text(yaml.safe_dump(hw_config(**{"schedule.steps": 4, "schedule.eval_every": 2}).model_dump(mode="json")))
    assert main(["train", str(pipeline), "--tracking-uri", mlflow_store, "--out", str(tmp_path / "out"),
                 "--data-dir", data_dir]) == 0
    [run] = mlflow.MlflowClient(mlflow_store).search_runs(
        [mlflow.MlflowClient(mlflow_store).get_experiment_by_name("hyperlab-train").experiment_id])
    assert run.info.status == "FINISHED" and {"val/nll", "val/nll_per_point"} <= set(run.data.metrics)

    out = tmp_path / "sample"
    assert main(["sample", run.info.run_id, "--length", "150", "--bias", "0.5", "--seed", "3", "--tracking-uri",
                 mlflow_store, "--out", str(out)]) == 0
    model = load_model(tmp_path / "out" / "checkpoint-4", hw_config(), data_dir)
    points, d_h = generate(model, 150, bias=0.5, seed=3, return_scales=True)  # what sample drew
    svg = (out / "strokes.svg").read_text()
    assert svg.count("<path") == len(to_strokes(points.numpy()))
    assert (out / "strokes.png").read_bytes()[:4] == (out / "activity.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "handwriting.html").read_text()
    assert "<script>" in page and "://" not in page.replace("http://www.w3.org/2000/svg", "")  # offline
    drawn = re.search(r'"xy": (\[.*?\]\]),', page).group(1)
    assert len(yaml.safe_load(drawn)) == 150
    change = weight_change(d_h.numpy())
    assert change.shape == (150, 4) and change[0].tolist() == [0, 0, 0, 0] and (change[1:] > 0).all()
    np.testing.assert_allclose(change[5, 2], torch.linalg.norm(d_h[5, 2] - d_h[4, 2]).item(), rtol=1e-6)


def test_the_page_colours_by_the_change_up_to_its_99th_percentile():
    """One huge step (the first, from the zero state) does not set the colour scale: levels are the total
    change over its 99th percentile, clipped to 1."""
    import json
    import re

    from hyperlab.analysis.strokes import animation_html

    points = np.zeros((200, 3))
    points[:, 0] = 1.0
    change = np.ones((200, 4))
    change[:, 0] = np.arange(200) / 199  # total = 3 + a ramp
    change[0] = 1000.0
    total = change.sum(axis=1)
    page = animation_html(points, change)
    levels = np.array(json.loads(re.search(r'"level": (\[.*?\])', page).group(1)))
    top = np.percentile(total, 99)
    np.testing.assert_allclose(levels, np.round(np.minimum(total / top, 1.0), 3))
    assert levels[0] == 1.0 and 0.75 < levels[1] < 0.76  # 3 / 3.98...: the rest of the line is not dark
