"""``hyperlab train`` and ``hyperlab sample`` end to end, through the real command line and MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from hyperlab.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "pipelines" / "quick_charlm.yaml"


@pytest.fixture(autouse=True)
def _private_cache_one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERLAB_CACHE_DIR", str(tmp_path / "derived"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_then_sample(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
    assert {m.step for m in client.get_metric_history(run.info.run_id, "model/n_params")} == {40, 80, 120}
    assert run.data.metrics["model/n_params"] == 50751  # hidden 64, hyper 16, n_z 4, vocab 65
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


def test_sample_of_an_unknown_run_is_a_user_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["sample", "0123456789abcdef", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert "0123456789abcdef" in capsys.readouterr().err
