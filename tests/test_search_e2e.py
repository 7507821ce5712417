"""Searches end to end through the real command line: a real local Ray (2 CPUs), a real sqlite MLflow
store in a temp dir and a real Optuna study. Each test runs `hyperlab search` as a separate process,
as a user does; the SIGKILL test kills that process mid-search and resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from hyperlab.analysis import load_search, pareto_front
from hyperlab.tracking import layout
from hyperlab.tracking.store import init_store

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_search.yaml"
BUDGET = 8000


def hyperlab(tmp_path: Path, *args: str, wait: bool = True, timeout: float = 300):
    cmd = [sys.executable, "-m", "hyperlab.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
    """The study as the searcher saved it with the experiment."""
    from hyperlab.search.searcher import BudgetedOptunaSearch
    from hyperlab.search.space import load_search_space

    space, base = load_search_space(TINY)
    searcher = BudgetedOptunaSearch(space, base, study_name=name)
    searcher.restore_from_dir(str(tmp_path / "ray" / name))
    return searcher.study


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


def test_search_end_to_end(tmp_path):
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
        assert Path(run.data.tags[layout.TAG_CHECKPOINT]).is_dir()
    assert len({r.data.tags[layout.TAG_OPTUNA_TRIAL] for r in trials}) == 4

    study = optuna_study(tmp_path, "tiny")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4
    infeasible = [t for t in study.trials if "infeasible" in t.user_attrs]
    assert infeasible and all(t.state.name == "FAIL" for t in infeasible)  # sampled but never trained
    assert all(int(t.user_attrs["infeasible"].split()[0]) > BUDGET for t in infeasible)
    # Optuna's values are the objectives each trial logged
    by_number = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): r for r in trials}
    for t in study.trials:
        if t.state.name == "COMPLETE":
            run = by_number[t.number]
            assert t.values == [run.data.metrics["model/n_params"], run.data.metrics["val/bpc"]]

    # the front the command prints is the front of the runs, worked out from mlflow.search_runs
    mlflow.set_tracking_uri(uri(tmp_path))
    raw = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`hyperlab.role` = 'trial'")
    objectives = {"model/n_params": "min", "val/bpc": "min"}
    points = raw[["metrics.model/n_params", "metrics.val/bpc"]].to_numpy()
    expected = {tuple(p) for p in points if not any((q <= p).all() and (q < p).any() for q in points)}
    df = load_search("tiny", uri(tmp_path))
    front = df[pareto_front(df, objectives) == 1]
    assert {tuple(p) for p in front[list(objectives)].to_numpy()} == expected
    front_csv = tmp_path / "front.csv"
    assert hyperlab(tmp_path, "pareto", "tiny", "--tracking-uri", uri(tmp_path), "--out", str(front_csv)).returncode == 0
    import pandas as pd

    written = pd.read_csv(front_csv)
    assert {tuple(p) for p in written[list(objectives)].to_numpy()} == expected

    # the parent run carries the front, the figures and the hypervolume series
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {layout.FRONT_TABLE_ARTIFACT, layout.FRONT_PARQUET_ARTIFACT, layout.TRADEOFF_PNG_ARTIFACT,
            layout.TRADEOFF_HTML_ARTIFACT} <= artifacts
    series = client.get_metric_history(parent.info.run_id, layout.HYPERVOLUME_METRIC)
    assert series[-1].step == 4 and all(a.value <= b.value for a, b in zip(series, series[1:]))

    # resuming a finished search changes nothing; a new search may not take its name
    again = hyperlab(tmp_path, "resume", "tiny", "--storage", str(tmp_path / "ray"))
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len(runs_of(tmp_path, "tiny")[2]) == 4
    taken = hyperlab(tmp_path, "search", str(TINY), "--name", "tiny", "--storage", str(tmp_path / "other"),
                     "--tracking-uri", uri(tmp_path))
    assert taken.returncode == 2 and "a search named 'tiny' already exists" in taken.stderr
    assert not (tmp_path / "other").exists()


def test_driver_killed_mid_search_resumes_without_duplicates(tmp_path):
    space = write_space(tmp_path, fixed__schedule__steps=60, fixed__schedule__eval_every=10, trials=4)
    init_store(uri(tmp_path))  # this test reads the store while the driver writes it: create it first
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
    steps_before = {r.data.tags[layout.TAG_TRIAL_ID]: _history(client, r) for r in before}

    out = hyperlab(tmp_path, "resume", "killed", "--storage", str(tmp_path / "ray"), "--num-cpus", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    client, parents, after = runs_of(tmp_path, "killed")
    assert [p.info.status for p in parents] == ["FINISHED"]
    ids = [r.data.tags[layout.TAG_TRIAL_ID] for r in after]
    assert len(ids) == len(set(ids))  # every trial exactly once
    assert not [r for r in after if r.info.status == "RUNNING"]
    complete = [r for r in after if r.data.tags[layout.TAG_FIDELITY] == layout.COMPLETE]
    assert len(complete) == 4
    for run in after:
        history = _history(client, run)
        if run.info.status == "FINISHED":
            assert sorted(history) == list(range(10, 61, 10))
        # a resumed trial continued from its checkpoint: a step logged before the kill and again after
        # it has the same validation BPC (exact resume), never a different one
        for step, value in steps_before.get(run.data.tags[layout.TAG_TRIAL_ID], {}).items():
            assert history[step] == pytest.approx(value, rel=1e-6)


def _trial_worker_pid() -> int | None:
    """The process running a Tune trial (Ray titles it ``ray::ImplicitFunc...``)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ImplicitFunc" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    return None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _history(client, run) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/bpc")}


def test_stopped_failed_and_complete_trials_each_go_where_they_belong(tmp_path):
    """One search, three fates: trained to the end, stopped early by ASHA, diverged (retried, then failed)."""
    space = write_space(tmp_path, trials=4, concurrency=2, budget=None, retries=1,
                        fixed__schedule__steps=30, fixed__schedule__eval_every=10,
                        fixed__model={"cell": "hyperlstm", "hidden_size": 16, "hyper_size": 8, "n_z": 2},
                        early_stopping={"metric": "val/bpc", "grace_period": 1, "reduction_factor": 2},
                        space={"optim.lr": {"type": "choice", "values": [0.03, 1.0e-7, 1.0e+20]}},
                        sampler={"name": "random", "seed": 10})  # lr: 0.03, 0.03, 1e-7, 1e20
    out = hyperlab(tmp_path, *search_args(tmp_path, space, "fates"))
    assert out.returncode == 0, out.stdout + out.stderr
    client, parents, trials = runs_of(tmp_path, "fates")
    assert parents[0].info.status == "FINISHED"
    by_lr = {}
    for run in trials:
        by_lr.setdefault(run.data.params["optim.lr"], []).append(run)
    assert sorted((lr, len(runs)) for lr, runs in by_lr.items()) == [("0.03", 2), ("1e+20", 1), ("1e-07", 1)]

    for run in by_lr["0.03"]:
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
    assert sorted((state_of[t.number], t.state.name) for t in study.trials) == [
        ("0.03", "COMPLETE"), ("0.03", "COMPLETE"), ("1e+20", "FAIL"), ("1e-07", "PRUNED")]
    df = load_search("fates", uri(tmp_path))
    front = df[pareto_front(df, {"model/n_params": "min", "val/bpc": "min"}) == 1]
    assert set(front["run_id"]) <= {r.info.run_id for r in by_lr["0.03"]}
    assert (tmp_path / "ray" / "fates" / "asha_state.pkl").is_file()  # the rungs survive a driver crash


def test_trial_whose_worker_is_killed_is_retried_from_its_checkpoint(tmp_path):
    space = write_space(tmp_path, trials=1, retries=1, budget=None,
                        fixed__schedule__steps=400, fixed__schedule__eval_every=20,
                        fixed__model={"cell": "hyperlstm", "hidden_size": 16, "hyper_size": 8, "n_z": 2},
                        space={"optim.lr": {"type": "choice", "values": [0.01]}})
    init_store(uri(tmp_path))
    driver = hyperlab(tmp_path, *search_args(tmp_path, space, "lost"), wait=False)
    try:
        deadline, victim = time.time() + 180, None
        while time.time() < deadline and driver.poll() is None and victim is None:
            time.sleep(0.5)
            _, _, trials = runs_of(tmp_path, "lost")
            if trials and len(_history(MlflowClient(uri(tmp_path)), trials[0])) >= 2:
                victim = _trial_worker_pid()
        assert victim is not None, (tmp_path / "driver.log").read_text()
        os.kill(victim, signal.SIGKILL)  # the trial's worker process dies, as on a lost node
        assert driver.wait(timeout=240) == 0, (tmp_path / "driver.log").read_text()
    finally:
        _kill_group(driver.pid)
    client, _, [run] = runs_of(tmp_path, "lost")
    assert run.info.status == "FINISHED" and run.data.tags[layout.TAG_RETRIES] == "1"
    history = client.get_metric_history(run.info.run_id, "val/bpc")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == list(range(20, 401, 20))  # continued from its last checkpoint
    assert len(steps) - len(set(steps)) <= 1  # at most the step after that checkpoint was logged twice
    by_step = {}
    for m in history:
        by_step.setdefault(m.step, set()).add(round(m.value, 9))
    assert all(len(values) == 1 for values in by_step.values())  # and the repeat equals the original


def test_quickstart_smoke_test(tmp_path):
    """The README's quickstart search, shrunk by --smoke-test to two trials of a few steps."""
    out = hyperlab(tmp_path, *search_args(tmp_path, ROOT / "search_spaces" / "quickstart.yaml", "qs"), "--smoke-test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mlflow ui --backend-store-uri" in out.stdout
    client, _, trials = runs_of(tmp_path, "qs")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert all(max(_history(client, r)) == 20 for r in trials)
    from hyperlab.search.runner import read_manifest

    assert read_manifest(str(tmp_path / "ray"), "qs")["smoke_test"] is True  # a resume shrinks it again
