"""``hyperlab train`` and ``hyperlab sample`` end to end, through the real command line and MLflow."""

from __future__ import annotations

import mlflow
import pytest
import torch
import yaml

from hyperlab.cli import main
from hyperlab.tracking import runs

from conftest import REPO

QUICK = REPO / "pipelines" / "quick_charlm.yaml"


pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.integration
def test_train_then_sample(mlflow_store, tmp_path):
    uri = mlflow_store
    assert main(["train", str(QUICK), "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 0

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("hyperlab-train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "quick_charlm"
    assert run.data.tags["hyperlab.outcome"] == "completed"
    assert run.data.params["model.cell"] == "ln_hyperlstm" and run.data.params["schedule.steps"] == "120"
    history = client.get_metric_history(run.info.run_id, "val/bpc")
    assert sorted(m.step for m in history) == [40, 80, 120]
    assert history[-1].value < history[0].value
    # the parameter count once, at step 0; the rest of the parameter report as tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "model/n_params")] == [0]
    assert run.data.metrics["model/n_params"] == 50751  # hidden 64, hyper 16, n_z 4, vocab 65
    assert not [k for k in run.data.metrics if k.startswith("model/") and k != "model/n_params"]
    assert int(run.data.tags["model/generator"]) > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "config.yaml", "parameter_report.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {
        "checkpoint/config.yaml", "checkpoint/model.pt", "checkpoint/trainer.pt"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["checkpoint-120"]
    assert (tmp_path / "artifacts" / "hyperlab-train").is_dir()  # beside the store, not in ./mlruns

    out = tmp_path / "sample"
    argv = ["sample", run.info.run_id, "--length", "120", "--primer", "KING", "--tracking-uri", uri,
            "--out", str(out), "--seed", "5"]
    assert main(argv) == 0
    text = (out / "sample.txt").read_text()
    assert text.startswith("KING") and len(text) == 4 + 120
    assert (out / "activity.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv[:-4] + ["--out", str(tmp_path / "again"), "--seed", "5"]) == 0
    assert (tmp_path / "again" / "sample.txt").read_text() == text  # the seed fixes the sample


def test_a_bad_config_exits_2_before_anything_is_created(tmp_path, capsys):
    config = yaml.safe_load(QUICK.read_text())
    config["optim"]["learning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    db = tmp_path / "store" / "mlflow.db"
    assert main(["train", str(bad), "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out")]) == 2
    assert "bad.yaml: optim.learning_rate: unknown key" in capsys.readouterr().err
    assert not db.parent.exists() and not (tmp_path / "out").exists()


def test_sample_of_an_unknown_run_is_a_user_error(mlflow_store, tmp_path, capsys):
    uri = mlflow_store
    assert main(["sample", "0123456789abcdef", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert "0123456789abcdef" in capsys.readouterr().err


def test_an_out_folder_holding_an_earlier_runs_checkpoints_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoint-120").mkdir(parents=True)
    (out / "checkpoint-120" / "model.pt").write_bytes(b"an earlier run's weights")
    db = tmp_path / "store" / "mlflow.db"
    assert main(["train", str(QUICK), "--tracking-uri", f"sqlite:///{db}", "--out", str(out)]) == 2
    assert f"--out {out} holds checkpoints of an earlier run (checkpoint-120)" in capsys.readouterr().err
    assert (out / "checkpoint-120" / "model.pt").read_bytes() == b"an earlier run's weights"
    assert not db.parent.exists()  # refused before any run was created


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_names_the_file_and_the_key(tmp_path, capsys):
    config = yaml.safe_load(QUICK.read_text())
    config["device"] = "cuda"
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    db = tmp_path / "store" / "mlflow.db"
    assert main(["train", str(path), "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out")]) == 2
    assert "gpu.yaml: device: 'cuda' requested but no CUDA device is available" in capsys.readouterr().err
    assert not db.parent.exists()


def test_log_metrics_keeps_finite_numbers_only():
    class Client:
        def __init__(self):
            self.logged = []

        def log_batch(self, run_id, metrics):
            self.logged += [(m.key, m.value, m.step) for m in metrics]
    client = Client()
    runs.log_metrics(client, "run", {"step": 8, "train/loss": float("nan"), "val/bpc": 1.25, "test/bpc": float("inf"),
                                     "model/n_params": 50751, "done": True, "outcome": "diverged",
                                     "throughput": -float("inf")}, step=8)
    assert client.logged == [("val/bpc", 1.25, 8), ("model/n_params", 50751.0, 8)]
