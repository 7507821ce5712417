"""Searches end to end through the real command line: a real local Ray (2 CPUs), a real sqlite MLflow
store in a temp dir and a real Optuna study. Each test runs `hyperlab search` as a separate process,
as a user does; the SIGKILL test kills that process mid-search and resumes it."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient

from hyperlab.analysis import pareto_front
from hyperlab.cli import main
from hyperlab.tracking import layout, load_search

from conftest import REPO, descendants

TINY = REPO / "tests" / "data" / "tiny_search.yaml"
pytestmark = pytest.mark.integration
BUDGET = 8000


def hyperlab(tmp_path: Path, *args: str, wait: bool = True, timeout: float = 300):
    cmd = [sys.executable, "-m", "hyperlab.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri in this process sets it
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=open(tmp_path / "driver.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def search_args(tmp_path: Path, space: Path, name: str) -> list[str]:
    return ["search", str(space), "--name", name, "--storage", str(tmp_path / "ray"),
            "--tracking-uri", uri(tmp_path), "--num-cpus", "2"]


def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs_of(tmp_path: Path, name: str):
    client = MlflowClient(uri(tmp_path))
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    parents = [r for r in runs if r.data.tags.get(layout.TAG_ROLE) == layout.ROLE_SEARCH]
    trials = [r for r in runs if r.data.tags.get(layout.TAG_ROLE) == layout.ROLE_TRIAL]
    return client, parents, trials


def optuna_study(tmp_path: Path, name: str):
    """The search's study, as Optuna's own tools open it (the journal beside the MLflow store)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))


def _dashboard_sees(journal: Path, name: str, trials: int, complete: int) -> None:
    """optuna-dashboard, started on the study's journal file, serves the study with its trials."""
    import json
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), str(journal),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2))
            except OSError:
                time.sleep(0.3)
        [summary] = studies["study_summaries"]
        assert summary["study_name"] == name
        detail = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0"))
        assert len(detail["trials"]) == trials and [t["state"] for t in detail["trials"]].count("Complete") == complete
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def write_space(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(TINY.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_search_end_to_end(mlflow_store, tmp_path, capsys, monkeypatch):
    out = hyperlab(tmp_path, *search_args(tmp_path, TINY, "tiny"))
    assert out.returncode == 0, out.stdout + out.stderr
    client, parents, trials = runs_of(tmp_path, "tiny")

    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags[layout.TAG_SEARCH] == "tiny"
    saved = client.download_artifacts(parent.info.run_id, layout.SEARCH_SPACE_ARTIFACT, str(tmp_path / "dl"))
    assert Path(saved).read_text() == TINY.read_text()
    assert parent.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())  # beside the store
    assert len(trials) == 4
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags[layout.TAG_FIDELITY] == layout.COMPLETE
        assert run.data.tags[layout.TAG_PARENT] == parent.info.run_id
        assert set(run.data.params) == {"model.hidden_size", "model.hyper_size", "model.n_z"}
        assert run.data.metrics["model/n_params"] <= BUDGET  # over-budget configurations never train
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/bpc")] == [10, 20]
        checkpoint = Path(run.data.tags[layout.TAG_CHECKPOINT])  # the trial's final checkpoint, and only it
        assert checkpoint.name == "checkpoint-20" and sorted(p.name for p in checkpoint.parent.iterdir()) == [
            "LATEST", "checkpoint-20"]
    assert len({r.data.tags[layout.TAG_OPTUNA_TRIAL] for r in trials}) == 4

    study = optuna_study(tmp_path, "tiny")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4
    infeasible = [t for t in study.trials if "infeasible" in t.user_attrs]
    assert infeasible and all(t.state.name == "PRUNED" for t in infeasible)  # sampled but never trained
    assert all(int(t.user_attrs["infeasible"].split()[0]) > BUDGET for t in infeasible)
    for t in study.trials:  # the budget as Optuna's constraint, which its constrained samplers learn from
        if "n_params" in t.user_attrs:
            assert t.constraints == {"n_params_over_budget": t.user_attrs["n_params"] - BUDGET}
    _dashboard_sees(tmp_path / "optuna.log", "tiny", len(study.trials), states.count("COMPLETE"))
    # Optuna's values are the objectives each trial logged
    by_number = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): r for r in trials}
    for t in study.trials:
        if t.state.name == "COMPLETE":
            run = by_number[t.number]
            assert t.values == [run.data.metrics["model/n_params"], run.data.metrics["val/bpc"]]

    # the front the command prints is the front of the runs, worked out from mlflow.search_runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri(tmp_path))  # undone after the test (set_tracking_uri would leak)
    mlflow.set_tracking_uri(uri(tmp_path))
    raw = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`hyperlab.role` = 'trial'")
    objectives = {"model/n_params": "min", "val/bpc": "min"}
    points = raw[["metrics.model/n_params", "metrics.val/bpc"]].to_numpy()
    expected = {tuple(p) for p in points if not any((q <= p).all() and (q < p).any() for q in points)}
    df = load_search("tiny", uri(tmp_path))
    front = df[pareto_front(df, objectives) == 1]
    assert {tuple(p) for p in front[list(objectives)].to_numpy()} == expected

    # one hypervolume per search: its reference fixed by the space before any trial (the most parameters
    # the budget allows; a uniform guess over the vocabulary), the same in MLflow's series and in compare
    import json

    from hyperlab.analysis import compare_searches
    from hyperlab.training.data_cache import data_shape

    reference = json.loads(parent.data.tags[layout.TAG_REFERENCE])
    assert reference == [BUDGET, math.log2(data_shape("charlm", "bundled").vocab_size)]
    logged = client.get_metric_history(parent.info.run_id, layout.HYPERVOLUME_METRIC)
    assert [m.step for m in logged] == list(range(1, len(logged) + 1))  # after each complete trial
    mine = sorted((math.log10(n), bpc) for n, bpc in points)  # parameters in decades, as every figure
    area, best = 0.0, reference[1]
    for (x, y), (next_x, _) in zip(mine, [*mine[1:], (math.log10(BUDGET), 0)]):
        best = min(best, y)
        area += (next_x - x) * max(0.0, reference[1] - best)
    assert logged[-1].value == pytest.approx(area)
    own = dict(zip(objectives, reference))
    compared = compare_searches({"tiny": df, "again": df}, objectives, references={"tiny": own, "again": own})
    assert compared["reference"] == reference and compared["hypervolume"]["tiny"] == pytest.approx(logged[-1].value)
    front_csv = tmp_path / "front.csv"
    assert main(["pareto", "tiny", "--tracking-uri", uri(tmp_path), "--out", str(front_csv)]) == 0
    import pandas as pd

    written = pd.read_csv(front_csv)
    assert {tuple(p) for p in written[list(objectives)].to_numpy()} == expected

    # the runs read as the MLflow UI shows them: model-training experiment, trial names, front and knee tags
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in trials:
        p = run.data.params
        assert run.info.run_name == (f"t{int(run.data.tags[layout.TAG_OPTUNA_TRIAL]):02d} h{p['model.hidden_size']} "
                                     f"hy{p['model.hyper_size']} z{p['model.n_z']}")
        # the parameter report once (step 0), the learning curves at every evaluation
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "model/n_params")] == [
            (0, run.data.metrics["model/n_params"])]
        assert not [k for k in run.data.metrics if k.startswith("model/") and k not in
                    ("model/n_params", "model/compression_ratio")]
    final = runs_of(tmp_path, "tiny")[2]  # tags as they are now
    tagged_front = {r.info.run_id for r in final if r.data.tags.get(layout.TAG_FRONT) == "1"}
    assert all(len(run_id) == 32 for run_id in written["run_id"])  # full ids in --out
    assert tagged_front == set(written["run_id"])
    assert {r.info.run_id for r in final if r.data.tags.get(layout.TAG_KNEE) == "1"} == set(
        written.loc[written["knee"], "run_id"])
    ranks = pareto_front(df, objectives)
    assert {r.info.run_id: r.data.tags[layout.TAG_FRONT] for r in final} == {
        row.run_id: str(int(rank == 1)) for row, rank in zip(df.itertuples(), ranks)}
    note = parent.data.tags[layout.TAG_NOTE]
    assert layout.TRADEOFF_HTML_ARTIFACT in note and "tags.hyperlab.front = '1'" in note

    # every trial's model one command away: its weights and config are the run's artifacts
    run = trials[0]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {
        "checkpoint/model.pt", "checkpoint/config.yaml"}
    from hyperlab import load_model  # the package's own entry point
    from hyperlab.training.checkpoint import load_model_state

    model = load_model(run.info.run_id[:10], tracking_uri=uri(tmp_path))
    reference = load_model_state(Path(run.data.tags[layout.TAG_CHECKPOINT]), "cpu")  # the storage's copy
    assert model.state_dict().keys() == reference.keys()
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)
    sampled = hyperlab(tmp_path, "sample", run.info.run_id[:8], "--tracking-uri", uri(tmp_path),
                           "--length", "30", "--out", str(tmp_path / "sampled"))
    assert sampled.returncode == 0, sampled.stdout + sampled.stderr
    assert len((tmp_path / "sampled" / "sample.txt").read_text()) == 30

    # the parent run carries the front, the figures and the hypervolume series
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {layout.FRONT_TABLE_ARTIFACT, layout.FRONT_PARQUET_ARTIFACT, layout.TRADEOFF_PNG_ARTIFACT,
            layout.TRADEOFF_HTML_ARTIFACT} <= artifacts
    series = client.get_metric_history(parent.info.run_id, layout.HYPERVOLUME_METRIC)
    assert series[-1].step == 4 and all(a.value <= b.value for a, b in zip(series, series[1:]))
    assert f"{layout.REPORT_DIR}/hypervolume.png" in artifacts

    # each trial's cost: its CPU share (1) times the seconds it trained; on the parent, the compute spent by
    # the time of each complete trial (all four complete here, so after the k-th, the first k that ended)
    cost = {}
    for run in trials:
        assert run.data.metrics["cost/cpu_seconds"] == pytest.approx(1 * run.data.metrics["time/elapsed"])
        assert run.data.metrics["cost/gpu_seconds"] == 0
        cost[run.info.end_time] = run.data.metrics["cost/cpu_seconds"]
    spent = [sum(seconds for _, seconds in sorted(cost.items())[:k]) / 3600 for k in range(1, 5)]
    cpu_hours = client.get_metric_history(parent.info.run_id, "search/cpu_hours")
    assert [m.step for m in cpu_hours] == [1, 2, 3, 4]
    assert [m.value for m in cpu_hours] == pytest.approx(spent)
    wall = [m.value for m in client.get_metric_history(parent.info.run_id, "search/wall_hours")]
    assert wall == sorted(wall) and 0 < wall[-1] * 3600 < (parent.info.end_time - parent.info.start_time) / 1000

    # resuming a finished search changes nothing; a new search may not take its name
    capsys.readouterr()
    assert main(["resume", "tiny", "--tracking-uri", uri(tmp_path)]) == 0  # no Ray needed: nothing to run
    assert "already finished" in capsys.readouterr().out
    assert len(runs_of(tmp_path, "tiny")[2]) == 4
    taken = main(["search", str(TINY), "--name", "tiny", "--storage", str(tmp_path / "other"),
                  "--tracking-uri", uri(tmp_path)])
    assert taken == 2 and "a search named 'tiny' already exists" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.long
def test_driver_killed_mid_search_resumes_without_duplicates(mlflow_store, tmp_path):
    # trials long enough (tens of seconds even on a fast machine) that the poll sees the middle
    space = write_space(tmp_path, fixed__schedule__steps=2000, fixed__schedule__eval_every=200, trials=4)
    driver = hyperlab(tmp_path, *search_args(tmp_path, space, "killed"), wait=False)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(1)
            _, _, trials = runs_of(tmp_path, "killed")
            running = [r for r in trials if r.info.status == "RUNNING" and r.data.metrics.get("val/bpc")]
            if any(r.info.status == "FINISHED" for r in trials) and running:
                break
        else:
            pytest.fail("search did not reach the middle in time:\n" + (tmp_path / "driver.log").read_text())
        driver.send_signal(signal.SIGKILL)  # the driver dies at once: no cleanup, no final snapshot
        driver.wait()
        time.sleep(3)  # Ray's reaper takes the local cluster down with its driver
    finally:
        _kill_group(driver.pid)  # whatever is left of that Ray, before the resume starts another

    client, _, before = runs_of(tmp_path, "killed")
    assert any(r.info.status == "RUNNING" for r in before)
    steps_before = {r.data.tags[layout.TAG_OPTUNA_TRIAL]: _history(client, r) for r in before}

    out = hyperlab(tmp_path, "resume", "killed", "--tracking-uri", uri(tmp_path), "--num-cpus", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    client, parents, after = runs_of(tmp_path, "killed")
    assert [p.info.status for p in parents] == ["FINISHED"]
    ids = [r.data.tags[layout.TAG_OPTUNA_TRIAL] for r in after]
    assert len(ids) == len(set(ids))  # every trial exactly once
    assert not [r for r in after if r.info.status == "RUNNING"]
    complete = [r for r in after if r.data.tags[layout.TAG_FIDELITY] == layout.COMPLETE]
    assert len(complete) == 4
    for run in after:
        history = _history(client, run)
        if run.info.status == "FINISHED":
            assert sorted(history) == list(range(200, 2001, 200))
        # a resumed trial continued from its checkpoint: a step logged before the kill and again after
        # it has the same validation BPC (exact resume), never a different one
        for step, value in steps_before.get(run.data.tags[layout.TAG_OPTUNA_TRIAL], {}).items():
            assert history[step] == pytest.approx(value, rel=1e-6)


def _trial_worker_pid(driver_pid: int, run) -> int | None:
    """The process running the trial (its run says ``IP:PID``), if it is one of the driver's own Ray's
    (a descendant of the driver: its local Ray's raylet starts the workers), never another test's."""
    process = run.data.tags.get(layout.TAG_PROCESS, "")
    pid = int(process.rpartition(":")[2]) if process else None
    return pid if pid in descendants(driver_pid) else None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _history(client, run) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/bpc")}


def test_stopped_failed_and_complete_trials_each_go_where_they_belong(mlflow_store, tmp_path):
    """One search, three fates: trained to the end, stopped early by ASHA, diverged (retried, then failed)."""
    space = write_space(tmp_path, trials=4, concurrency=1, budget=None, retries=1,  # rung 1 in that order
                        fixed__schedule__steps=30, fixed__schedule__eval_every=10,
                        fixed__model={"cell": "hyperlstm", "hidden_size": 16, "hyper_size": 8, "n_z": 2},
                        early_stopping={"metric": "val/bpc", "grace_period": 1, "reduction_factor": 2},
                        space={"optim.lr": {"type": "choice", "values": [0.03, 0.02, 1.0e-7, 1.0e+20]}},
                        sampler={"name": "random", "seed": 32})  # lr: 0.02, 0.03 (better at rung 1), 1e20, 1e-7
    out = hyperlab(tmp_path, *search_args(tmp_path, space, "fates"))
    assert out.returncode == 0, out.stdout + out.stderr
    client, parents, trials = runs_of(tmp_path, "fates")
    assert parents[0].info.status == "FINISHED"
    by_lr = {}
    for run in trials:
        by_lr.setdefault(run.data.params["optim.lr"], []).append(run)
    assert sorted((lr, len(runs)) for lr, runs in by_lr.items()) == [("0.02", 1), ("0.03", 1), ("1e+20", 1), ("1e-07", 1)]

    for run in by_lr["0.03"] + by_lr["0.02"]:
        assert run.info.status == "FINISHED" and run.data.tags[layout.TAG_FIDELITY] == layout.COMPLETE
        assert sorted(_history(client, run)) == [10, 20, 30]
    [stopped] = by_lr["1e-07"]  # hopeless, stopped by ASHA at the first rung
    assert stopped.info.status == "KILLED" and stopped.data.tags[layout.TAG_FIDELITY] == layout.PARTIAL
    assert sorted(_history(client, stopped)) == [10]
    [failed] = by_lr["1e+20"]  # diverges to NaN at the first evaluation, on both tries
    assert failed.info.status == "FAILED" and failed.data.tags[layout.TAG_FIDELITY] == layout.FAILED
    assert failed.data.tags[layout.TAG_OUTCOME] == "diverged"
    assert failed.data.tags[layout.TAG_RETRIES] == "1"
    error = Path(client.download_artifacts(failed.info.run_id, layout.ERROR_ARTIFACT, str(tmp_path))).read_text()
    assert "TrainingDiverged" in error

    state_of = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): r.data.params["optim.lr"] for r in trials}
    study = optuna_study(tmp_path, "fates")
    trained = [t for t in study.trials if "ray_trial_id" in t.user_attrs]  # not the copies of a configuration
    assert sorted((state_of[t.number], t.state.name) for t in trained) == [
        ("0.02", "COMPLETE"), ("0.03", "COMPLETE"), ("1e+20", "FAIL"), ("1e-07", "PRUNED")]
    df = load_search("fates", uri(tmp_path))
    front = df[pareto_front(df, {"model/n_params": "min", "val/bpc": "min"}) == 1]
    assert set(front["run_id"]) <= {r.info.run_id for r in by_lr["0.03"] + by_lr["0.02"]}
    assert (tmp_path / "ray" / "fates" / "early_stopping.json").is_file()  # the rungs survive a driver crash


@pytest.mark.long
def test_trial_whose_worker_is_killed_is_retried_from_its_checkpoint(mlflow_store, tmp_path):
    space = write_space(tmp_path, trials=1, retries=1, budget=None,
                        fixed__schedule__steps=3000, fixed__schedule__eval_every=100,  # outlasts the poll
                        fixed__model={"cell": "hyperlstm", "hidden_size": 16, "hyper_size": 8, "n_z": 2},
                        space={"optim.lr": {"type": "choice", "values": [0.01]}})
    driver = hyperlab(tmp_path, *search_args(tmp_path, space, "lost"), wait=False)
    try:
        deadline, victim = time.time() + 180, None
        while time.time() < deadline and driver.poll() is None and victim is None:
            time.sleep(0.5)
            _, _, trials = runs_of(tmp_path, "lost")
            if trials and len(_history(MlflowClient(uri(tmp_path)), trials[0])) >= 2:
                victim = _trial_worker_pid(driver.pid, trials[0])
        assert victim is not None, (tmp_path / "driver.log").read_text()
        os.kill(victim, signal.SIGKILL)  # the trial's worker process dies, as on a lost node
        assert driver.wait(timeout=240) == 0, (tmp_path / "driver.log").read_text()
    finally:
        _kill_group(driver.pid)
    client, _, [run] = runs_of(tmp_path, "lost")
    assert run.info.status == "FINISHED" and run.data.tags[layout.TAG_RETRIES] == "1"
    history = client.get_metric_history(run.info.run_id, "val/bpc")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == list(range(100, 3001, 100))  # continued from its last checkpoint
    assert len(steps) - len(set(steps)) <= 1  # at most the step after that checkpoint was logged twice
    by_step = {}
    for m in history:
        by_step.setdefault(m.step, set()).add(round(m.value, 9))
    assert all(len(values) == 1 for values in by_step.values())  # and the repeat equals the original


def test_quickstart_smoke_test(mlflow_store, tmp_path):
    """The README's quickstart search, shrunk by --smoke-test to two trials of a few steps."""
    out = hyperlab(tmp_path, *search_args(tmp_path, REPO / "search_spaces" / "quickstart.yaml", "qs"), "--smoke-test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mlflow ui --backend-store-uri" in out.stdout and "?workflowType=machine_learning" in out.stdout
    # the console: one progress line, no library log lines (Ray's, Optuna's, MLflow's) without --verbose
    printed = out.stdout + out.stderr
    assert "2/2 trials  running 0  failed 0  elapsed" in printed
    assert not [line for line in printed.splitlines() if " INFO " in line or "View run" in line], printed
    client, _, trials = runs_of(tmp_path, "qs")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert all(max(_history(client, r)) == 20 for r in trials)
    from hyperlab.tracking.read import read_manifest

    manifest = read_manifest("qs", uri(tmp_path))  # where the search lives, as resume reads it
    assert manifest["smoke_test"] is True  # a resume shrinks it again
    assert manifest["storage"] == str(tmp_path / "ray") and manifest["tracking_uri"] == uri(tmp_path)
    assert manifest["optuna_storage"] == str(tmp_path / "optuna.log")  # beside the MLflow store


@pytest.mark.long
def test_searches_from_two_folders_with_one_tracking_uri_share_one_home(_empty_store, tmp_path):
    """``MLFLOW_TRACKING_URI`` is the store wherever a search starts; Ray's results go beside it, not into
    the folder it started from."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(_empty_store, home / "mlflow.db")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        out = subprocess.run([sys.executable, "-m", "hyperlab.cli", "search", str(TINY), "--smoke-test", "--name",
                              f"from-{folder}", "--num-cpus", "2"], cwd=tmp_path / folder, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert list((tmp_path / folder).iterdir()) == []  # nothing written where it started
    listed = subprocess.run([sys.executable, "-m", "hyperlab.cli", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "from-a" in listed.stdout and "from-b" in listed.stdout, listed.stdout + listed.stderr
    assert sorted(p.name for p in (home / "ray").iterdir()) == ["from-a", "from-b"]
    for name in ("from-a", "from-b"):
        df = load_search(name, env["MLFLOW_TRACKING_URI"])
        assert len(df) == 2 and (df["fidelity"] == "complete").all()


@pytest.mark.long
def test_the_cpu_kernels_are_built_once_before_the_trials_with_a_notice(mlflow_store, tmp_path):
    """On a machine without the C++ cell loops (a fresh extensions folder), the driver builds them before
    any trial starts and says so; the trials load that build, and their clocks do not include it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "hyperlab.cli", *search_args(tmp_path, TINY, "fresh")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    notice = [line for line in out.stdout.splitlines() if "building the HyperLSTM's C++ cell loops" in line]
    built = [line for line in out.stdout.splitlines() if line.strip().startswith("built in")]
    assert len(notice) == 1 and len(built) == 1, out.stdout
    assert out.stdout.index(notice[0]) < out.stdout.index("━")  # before the first trial's progress
    assert len(list((tmp_path / "extensions").rglob("*.so"))) == 1  # one build, shared by the trials
    build_s = float(built[0].split()[2])
    _, _, trials = runs_of(tmp_path, "fresh")
    assert trials and build_s < wall
    assert all(r.data.metrics["time/elapsed"] < build_s for r in trials), (build_s, [r.data.metrics for r in trials])


def test_the_handwriting_search_space_smoke_test(mlflow_store, tmp_path):
    """`search_spaces/iam_hyperlstm.yaml` shrunk by --smoke-test, on pen lines in IAM-OnDB's layout: each
    trial's parameter count is the closed form of the hyper_size and n_z it was given, its val/nll is a
    finite log-loss, and Optuna's study holds the same two objective vectors."""
    from test_models_handwriting import closed_form
    from test_training_handwriting import write_lines

    data_dir = write_lines(tmp_path / "data")
    out = hyperlab(tmp_path, *search_args(tmp_path, REPO / "search_spaces" / "iam_hyperlstm.yaml", "hw"),
                   "--smoke-test", "--data-dir", data_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    _, [parent], trials = runs_of(tmp_path, "hw")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    hidden = int(parent.data.params["model.hidden_size"])  # the fixed part lives on the search's run
    assert hidden == 32  # the smoke test's cap on the space's 256
    vectors = set()
    for run in trials:
        params, metrics = run.data.params, run.data.metrics
        hyper, n_z = int(params["model.hyper_size"]), int(params["model.n_z"])
        assert metrics["model/n_params"] == closed_form("hyperlstm", hidden, hyper, n_z)
        assert math.isfinite(metrics["val/nll"])
        assert metrics["val/nll_per_point"] * 319 == pytest.approx(metrics["val/nll"])  # 320 points: 319 predicted
        vectors.add((metrics["model/n_params"], round(metrics["val/nll"], 6)))
    study = optuna_study(tmp_path, "hw")
    assert {(t.values[0], round(t.values[1], 6)) for t in study.trials if t.state.name == "COMPLETE"} == vectors


def test_moasha_completes_the_small_models_that_asha_stops(tmp_path):
    """Two real searches of the same 12 configurations (one seed, one trial at a time), on a task where the
    smaller model is worse at every rung: with MO-ASHA the four smallest train to the end, with ASHA on
    val/bpc alone none does; each search's fates are its rule's, replayed over the same trials."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from hyperlab.search.scheduler import ParetoRungs, Rungs

    data = yaml.safe_load(TINY.read_text())
    data.update(trials=12, concurrency=1, budget=None, sampler={"name": "random", "seed": 10})
    data["fixed"]["schedule"].update(steps=40, eval_every=10)  # 4 evaluations: rungs at 1, 2 and 4
    rules = {"moasha": {"rule": "moasha"}, "asha": {"rule": "asha", "metric": "val/bpc"}}
    for name, rule in rules.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**data, "early_stopping": {
            **rule, "grace_period": 1, "reduction_factor": 2}}))
    out = subprocess.run([sys.executable, str(REPO / "tests" / "data" / "rung_driver.py"), str(tmp_path),
                          *rules], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rule asha) stops small models first" in out.stderr  # the warning for ASHA on a front

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    studies = {name: optuna.load_study(study_name=name, storage=storage).trials for name in rules}
    sizes = [int(t.user_attrs["n_params"]) for t in studies["asha"]]
    assert [int(t.user_attrs["n_params"]) for t in studies["moasha"]] == sizes
    replay = {"moasha": ParetoRungs(1, 2, 4, ["min", "min"]), "asha": Rungs(1, 2, 4, "min")}
    for name, rungs in replay.items():  # the bpc the trainable reports (tests/data/rung_driver.py)
        expected = []
        for number, n in enumerate(sizes):
            bpc = [1.0 + 300.0 / n ** 0.5 + 1.0 / e for e in (1, 2, 4)]
            on = all(rungs.decide(str(number), e, (n, v) if name == "moasha" else v) for e, v in zip((1, 2, 4), bpc))
            expected.append("COMPLETE" if on else "PRUNED")
        assert [t.state.name for t in studies[name]] == expected, name
    smallest = sorted(range(12), key=sizes.__getitem__)[:4]
    completed = {name: [studies[name][i].state.name == "COMPLETE" for i in smallest] for name in rules}
    assert completed == {"moasha": [True] * 4, "asha": [False] * 4}
    assert "PRUNED" in [t.state.name for t in studies["moasha"]]  # it does stop trials


def test_nsga2_generations_advance_in_a_search_that_stops_trials(tmp_path):
    """A real search with NSGA-II (population 2) and MO-ASHA, one trial at a time: every trial's generation
    is the rule's (a generation ends once two of its trials ended in training, complete or stopped),
    replayed over the study's record; Optuna's own NSGA-II, counting complete trials only, would be
    behind."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from hyperlab.search.searcher import ATTR_RAY_TRIAL, EarlyStoppedNSGAII

    data = yaml.safe_load(TINY.read_text())
    data.update(trials=16, concurrency=1, budget=None, sampler={"name": "nsga2", "seed": 3, "population_size": 2})
    data["fixed"]["schedule"].update(steps=40, eval_every=10)
    data["early_stopping"] = {"rule": "moasha", "grace_period": 1, "reduction_factor": 2}
    (tmp_path / "nsga.yaml").write_text(yaml.safe_dump(data))
    out = subprocess.run([sys.executable, str(REPO / "tests" / "data" / "rung_driver.py"), str(tmp_path), "nsga"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = optuna.load_study(study_name="nsga", storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))).trials
    trained = [t for t in trials if ATTR_RAY_TRIAL in t.user_attrs]
    assert len(trained) == 16 and {t.state.name for t in trained} == {"COMPLETE", "PRUNED"}
    key = EarlyStoppedNSGAII._GENERATION_KEY
    # one at a time, and the next trial asked as one is handed out: trial k's ask saw trained trials
    # before k-1 ended (and the copies of trained ones, told FAIL at once, count for nothing)
    def replay(counts) -> list[int]:
        generations = []
        for k in range(len(trained)):
            ended = [g for g, t in zip(generations, trained[:max(k - 1, 0)]) if counts(t)]
            latest = max(ended, default=0)
            generations.append(latest + 1 if ended.count(latest) >= 2 else latest)
        return generations

    ours = [t.system_attrs[key] for t in trained]
    assert ours == replay(lambda t: True)
    optunas = replay(lambda t: t.state.name == "COMPLETE")  # Optuna's NSGA-II on the same trials
    assert ours[-1] > optunas[-1], (ours, optunas, "".join(t.state.name[0] for t in trained))
