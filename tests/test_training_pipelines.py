"""Every shipped pipeline loads, validates and trains, shrunk to a few steps.

Real datasets come from ``$HYPERLAB_SHARED_DATA`` or ``../shared/data``; where a pipeline's dataset is
absent there, a small generated stand-in of the same kind replaces it (and the test says so).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hyperlab.config_io import load_yaml
from hyperlab.errors import UserError
from hyperlab.training import TrainConfig, fit, parameter_count
from hyperlab.training.config import smoke_overrides
from hyperlab.training.data_cache import data_shape

from conftest import REPO

PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def test_the_shipped_pipelines_are_all_here():
    assert {p.name for p in PIPELINES} >= {"ptb_hyperlstm.yaml", "ptb_lstm.yaml", "mnist_hyper.yaml",
                                           "cifar_hyperwrn.yaml", "quick_charlm.yaml"}


@pytest.mark.integration
@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_trains_shrunk(path, tmp_path, shared_data):
    config = load_yaml(TrainConfig, path)
    config = config.with_overrides(smoke_overrides(config, steps=4))
    data_dir, stand_in = _data_for(config, shared_data.root, tmp_path)
    if stand_in is not None:
        shrink = {"data.dataset": stand_in, "data.batch_size": 8}
        if config.task == "charlm":  # the stand-in's 300-character validation split holds 8 streams of 16
            shrink["data.seq_len"] = 16
        config = config.with_overrides(shrink)
    reports = []
    result = fit(config, lambda m, p: reports.append(m), workdir=tmp_path / "run", data_dir=data_dir)
    assert [m["step"] for m in reports] == [2, 4] and result["outcome"] == "completed"
    assert result["model/n_params"] == parameter_count(config, data_dir)["total"]
    val_metric, test_metric = {"charlm": ("val/bpc", "test/bpc"), "classify": ("val/acc", "test/acc"),
                               "handwriting": ("val/nll", "test/nll")}[config.task]
    assert math.isfinite(result["train/loss"]) and math.isfinite(result[val_metric])
    assert (test_metric in result) == config.schedule.test


def test_the_handwriting_pipelines_have_the_papers_parameter_counts():
    counts = {name: parameter_count(load_yaml(TrainConfig, REPO / "pipelines" / f"iam_{name}.yaml"))["total"]
              for name in ("lstm", "ln_lstm", "hyperlstm", "ln_hyperlstm")}
    # PAPER.md section 3: 3.36M, 3.37M, 3.94M, 3.95M (test_models_handwriting: the closed form)
    assert counts == {"lstm": 3_363_421, "ln_lstm": 3_368_821, "hyperlstm": 3_941_181, "ln_hyperlstm": 3_951_461}


def test_paper_scale_pipelines_have_the_papers_parameter_counts(shared_data):
    data = shared_data("ptb")
    counts = {name: parameter_count(load_yaml(TrainConfig, REPO / "pipelines" / name), str(data))
              for name in ("ptb_hyperlstm.yaml", "ptb_lstm.yaml")}
    assert counts["ptb_hyperlstm.yaml"]["total"] == 4_923_154  # PAPER.md: 4.92M (LN HyperLSTM 1000)
    assert counts["ptb_lstm.yaml"]["total"] == 4_254_050  # 4.25M (LSTM 1000)


def _data_for(config: TrainConfig, data: Path | None, tmp_path: Path) -> tuple[str | None, str | None]:
    """(data directory, stand-in dataset or None): the real data when the shared copy ``data`` has it
    (handwriting: always generated lines in IAM-OnDB's layout; the real lines train in
    ``test_models_handwriting``)."""
    if config.task == "handwriting":
        from test_training_handwriting import write_lines

        return write_lines(tmp_path), None
    if data is not None:
        try:
            data_shape(config.task, config.data.dataset, str(data))
            return str(data), None
        except UserError:
            pass
    if config.model.name == "mnist_convnet":
        pytest.skip("MNIST not found under $HYPERLAB_SHARED_DATA or ../shared/data (the net needs 1x28x28)")
    if config.task == "charlm":
        return None, _tiny_text(tmp_path / "tiny.txt")
    return None, _tiny_images(tmp_path / "images")


def _tiny_text(path: Path) -> str:
    rng = np.random.default_rng(0)
    path.write_text("".join(rng.choice(list("abcdefgh \n"), size=6000)))
    return str(path)


def _tiny_images(folder: Path) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for label in ("a", "b"):
            (folder / split / label).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(
                    folder / split / label / f"{i}.png")
    return str(folder)
