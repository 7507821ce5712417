"""How runs are named and found: trial run names from their varied values, the parameter report split
from the learning curves, run ids by an unambiguous prefix (against a real sqlite MLflow store)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from hyperlab.errors import UserError
from hyperlab.tracking.read import resolve_run_id
from hyperlab.tracking.runs import split_parameter_report
from hyperlab.tracking.writer import trial_run_name


def test_trial_run_names_carry_the_optuna_number_and_the_varied_values():
    assert trial_run_name(7, {"model.hidden_size": 68, "model.hyper_size": 14, "model.n_z": 6}) == "t07 h68 hy14 z6"
    assert trial_run_name(123, {"optim.lr": 0.003125, "model.use_layer_norm": True}) == "t123 lr0.00313 uln1"
    assert trial_run_name(0, {"model.cell": "lstm"}) == "t00 clstm"
    assert trial_run_name(3, {}) == "t03"


def test_the_parameter_report_is_split_from_the_curves():
    curves, metrics, tags = split_parameter_report({"train/loss": 1.5, "val/bpc": 2.0, "model/n_params": 4096,
                                                    "model/compression_ratio": 0.25, "model/n_params_hyper": 0})
    assert curves == {"train/loss": 1.5, "val/bpc": 2.0}
    assert metrics == {"model/n_params": 4096, "model/compression_ratio": 0.25}
    assert tags == {"model/n_params_hyper": "0"}


def test_run_ids_resolve_from_an_unambiguous_prefix(mlflow_store):
    client = MlflowClient(mlflow_store)
    experiment = client.create_experiment("prefixes")
    ids = [client.create_run(experiment).info.run_id for _ in range(17)]  # 17 > 16 first digits: two share one
    for run_id in ids:
        assert resolve_run_id(run_id, mlflow_store) == run_id
        unique = next(n for n in range(1, 33) if sum(other.startswith(run_id[:n]) for other in ids) == 1)
        assert resolve_run_id(run_id[:unique].upper(), mlflow_store) == run_id
    shared = next(i[:1] for i in ids if sum(o.startswith(i[:1]) for o in ids) > 1)
    with pytest.raises(UserError, match="ambiguous"):
        resolve_run_id(shared, mlflow_store)
    first = ids[0]
    absent = first[:30] + ("0" if first[30] != "0" else "1")  # 31 digits no run starts with
    with pytest.raises(UserError, match="no run whose id starts with"):
        resolve_run_id(absent, mlflow_store)
    with pytest.raises(UserError, match="not a run id"):
        resolve_run_id("not-an-id", mlflow_store)
