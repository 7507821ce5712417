"""Slow checks on the real data (``-m slow``): the paper's orderings at CPU scale.

Each needs the shared data (``$HYPERLAB_SHARED_DATA`` or ``../shared/data``) and skips without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperlab.config_io import load_yaml
from hyperlab.training import TrainConfig, fit

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _train(pipeline: str, data_dir: str, tmp_path: Path, **overrides) -> dict:
    config = load_yaml(TrainConfig, REPO / "pipelines" / pipeline).with_overrides(overrides)
    return fit(config, workdir=tmp_path / Path(pipeline).stem, data_dir=data_dir)


def test_hyperlstm_beats_lstm_of_the_same_width_on_char_ptb(tmp_path, shared_data):
    data = str(shared_data("ptb"))
    short = {"schedule.steps": 400, "schedule.eval_every": 400, "schedule.eval_batches": 30,
             "schedule.test": False}
    hyper = _train("ptb_small_hyperlstm.yaml", data, tmp_path, **short)
    lstm = _train("ptb_small_lstm.yaml", data, tmp_path, **short)
    assert hyper["val/bpc"] < lstm["val/bpc"] - 0.1
    assert hyper["model/n_params"] > lstm["model/n_params"]


def test_hyper_mnist_net_is_smaller_and_nearly_as_accurate(tmp_path, shared_data):
    data = str(shared_data("mnist"))
    short = {"schedule.steps": 110, "schedule.eval_every": 110}  # two epochs of 55 batches of 1000
    hyper = _train("mnist_hyper.yaml", data, tmp_path, **short)
    plain = _train("mnist_conv.yaml", data, tmp_path, **short)
    assert (hyper["model/n_params"], plain["model/n_params"]) == (12_910, 21_210)
    assert hyper["model/compression_ratio"] == pytest.approx(4244 / 12544)
    assert plain["test/acc"] > 0.96 and hyper["test/acc"] > 0.96  # measured: 0.9666, 0.9676
