"""A search interrupted at several moments and in every way a driver is stopped, then resumed: exactly the
trials the space asks for, each Optuna trial number once, every trial continued from its last checkpoint,
no run left RUNNING, and every trial's result equal to that of an uninterrupted search with the same seed
(the random sampler and the training are deterministic; resume is exact).

Real local Ray, real sqlite MLflow and Optuna stores, the real command line in separate processes, as a
user runs it; Ctrl-C is SIGINT to the driver's whole process group, as a terminal sends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hyperlab.tracking import layout

pytestmark = pytest.mark.long

TRIALS = 5
SPACE = {
    "task": "charlm", "model": "char_rnn", "objectives": {"model/n_params": "min", "val/bpc": "min"},
    "fixed": {"seed": 0, "device": "cpu", "data": {"dataset": "bundled", "batch_size": 8, "seq_len": 16},
              "model": {"cell": "hyperlstm", "num_layers": 1}, "optim": {"lr": 0.01, "clip": 1.0},
              "schedule": {"steps": 60, "eval_every": 10, "eval_batches": 2, "test": False}},
    "space": {"model.hidden_size": {"type": "int", "low": 8, "high": 32, "log": True},
              "model.n_z": {"type": "int", "low": 1, "high": 4}},
    "sampler": {"name": "random", "seed": 7}, "trials": TRIALS, "concurrency": 2, "resources": {"cpu": 1},
}
# the driver under a terminal: SIGINT back to its default (a background child of a script ignores it)
DRIVER = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from hyperlab.cli import main; sys.exit(main())")


def _argv(folder: Path, *command: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, *command, "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]


def _start(folder: Path, *command: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(folder / f"{command[0]}.log", "a")
    return subprocess.Popen(_argv(folder, *command), cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _search(folder: Path) -> subprocess.Popen:
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return _start(folder, "search", str(folder / "space.yaml"), "--name", "s", "--num-cpus", "2")


def _trial_runs(folder: Path) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("s")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")
    return runs


def _wait_for(driver: subprocess.Popen, folder: Path, condition, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        try:
            if condition(_trial_runs(folder)):
                return
        except Exception:  # noqa: BLE001 - the store may be mid-migration when first read
            pass
        time.sleep(0.3)
    pytest.fail(f"the search never reached the moment (exit {driver.poll()}):\n" + (folder / "search.log").read_text())


def _threads_taking_sigterm(pid: int) -> list[str]:
    """The driver's threads (native ones too) that do not block SIGTERM: a signal the kernel hands any but
    the waiting one goes to Python's handler, which runs only when the main thread next runs Python."""
    taking = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
            if not int(status["SigBlk"], 16) & (1 << (signal.SIGTERM - 1)):
                taking.append(f"{task.name} ({status['Name'].strip()})")
    return taking


def _kill_group(pid: int, signum=signal.SIGKILL) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _resume(folder: Path) -> int:
    resumed = _start(folder, "resume", "s", "--num-cpus", "2")
    try:
        return resumed.wait(timeout=600)
    finally:
        _kill_group(resumed.pid)


def _results(folder: Path) -> dict[int, tuple[float, float]]:
    """Optuna trial number -> (parameters, final val/bpc) of the complete trials, read from MLflow."""
    found = {}
    for run in _trial_runs(folder):
        if run.data.tags.get(layout.TAG_FIDELITY) == layout.COMPLETE:
            found[int(run.data.tags[layout.TAG_OPTUNA_TRIAL])] = (run.data.metrics["model/n_params"],
                                                                 run.data.metrics["val/bpc"])
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, tuple[float, float]]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    driver = _search(folder)
    try:
        assert driver.wait(timeout=600) == 0, (folder / "search.log").read_text()
    finally:
        _kill_group(driver.pid)
    results = _results(folder)
    assert len(results) == TRIALS
    return results


MOMENTS = {
    "first trial just started": lambda runs: any(r.info.status == "RUNNING" for r in runs),
    "mid-trial, none finished": lambda runs: any(r.data.metrics.get("val/bpc") for r in runs),
    "one finished, others running": lambda runs: any(r.info.status == "FINISHED" for r in runs)
    and any(r.info.status == "RUNNING" for r in runs),
    "all but the last finished": lambda runs: sum(r.info.status == "FINISHED" for r in runs) >= TRIALS - 1,
}
WAYS = {  # how the driver is stopped: (signals to its process group, with pauses), its exit code
    "SIGKILL": ([signal.SIGKILL], None),
    "SIGTERM": ([signal.SIGTERM], 143),
    "one Ctrl-C": ([signal.SIGINT], 130),
    "two Ctrl-Cs": ([signal.SIGINT, signal.SIGINT], 130),
}
CASES = [(moment, "SIGKILL") for moment in MOMENTS] + [("one finished, others running", way)
                                                        for way in ("SIGTERM", "one Ctrl-C", "two Ctrl-Cs")]


@pytest.mark.parametrize("moment, way", CASES, ids=[f"{w} when {m}" for m, w in CASES])
def test_an_interrupted_search_resumes_to_exactly_the_uninterrupted_one(moment, way, uninterrupted, tmp_path):
    driver = _search(tmp_path)
    try:
        _wait_for(driver, tmp_path, MOMENTS[moment])
        signals, expected_code = WAYS[way]
        if way == "SIGTERM":  # one thread takes it: the one in sigwait (which unblocks it while it waits)
            assert len(_threads_taking_sigterm(driver.pid)) == 1, _threads_taking_sigterm(driver.pid)
        if signals == [signal.SIGKILL]:
            os.kill(driver.pid, signal.SIGKILL)  # the driver alone dies, at once: no cleanup, no final snapshot
        else:
            for signum in signals:
                _kill_group(driver.pid, signum)  # as a terminal sends it: the whole foreground group
                time.sleep(1.0)
        code = driver.wait(timeout=180)
        if expected_code is not None:
            assert code == expected_code, (tmp_path / "search.log").read_text()
            log = (tmp_path / "search.log").read_text()
            assert "/hyperlab/" not in log, log  # no traceback of ours (Ray's own processes may print theirs)
    finally:
        _kill_group(driver.pid)  # what is left of its local Ray, before the resume starts another
    before = _trial_runs(tmp_path)
    if expected_code is not None:  # a clean stop closes the record: nothing RUNNING, the search resumable
        assert not [r for r in before if r.info.status == "RUNNING"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    unfinished = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): max(
        [m.step for m in client.get_metric_history(r.info.run_id, "val/bpc")], default=0)
        for r in before if r.info.status != "FINISHED"}

    assert _resume(tmp_path) == 0, (tmp_path / "resume.log").read_text()
    runs = _trial_runs(tmp_path)
    numbers = [int(r.data.tags[layout.TAG_OPTUNA_TRIAL]) for r in runs]
    assert sorted(numbers) == sorted(set(numbers)) and len(numbers) == TRIALS  # every trial exactly once
    assert not [r for r in runs if r.info.status != "FINISHED"]
    assert _results(tmp_path) == uninterrupted  # same trials, same results, to the last bit
    for run in runs:  # every evaluation logged once, none lost
        number = int(run.data.tags[layout.TAG_OPTUNA_TRIAL])
        if unfinished.get(number):  # it had trained: it continued from a checkpoint at least as late
            assert int(run.data.tags.get(layout.TAG_RESUMED_FROM, 0)) >= unfinished[number], number
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/bpc")]
        assert steps == list(range(10, 61, 10)), (run.data.tags[layout.TAG_OPTUNA_TRIAL], steps)
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    complete = {t.number: tuple(t.values) for t in study.trials if t.state.name == "COMPLETE"}
    assert complete == uninterrupted  # Optuna's record equals MLflow's
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def _snapshot_statuses(experiment: Path) -> dict[int, str]:
    """Optuna trial number -> the Tune status Ray's latest experiment snapshot holds for it."""
    import json

    from ray.tune.experiment import Trial

    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    statuses = {}
    for json_state, _ in json.loads(states[-1].read_text())["trial_data"]:
        trial = Trial.from_json_state(json_state, stub=True)
        statuses[int(trial.config["_optuna_trial"])] = trial.status
    return statuses


def test_an_early_stop_decided_just_before_a_sigkill_holds_after_resume(tmp_path):
    """The driver is killed as soon as the rungs' file records a trial stopped, before Ray's snapshot shows
    the trial ended: on resume the trial comes back from the checkpoint of the evaluation it was stopped at,
    reports its evaluations again up to there, trains nothing more and ends stopped early; the search still
    ends with exactly the trials asked for, each once."""
    space = {**SPACE, "concurrency": 1, "early_stopping": {"rule": "asha", "metric": "val/bpc", "grace_period": 1,
                                                             "reduction_factor": 2}}
    space["space"] = {"model.hidden_size": {"type": "int", "low": 8, "high": 32, "log": True},
                      "optim.lr": {"type": "float", "low": 1e-4, "high": 0.05, "log": True}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    rungs = tmp_path / "ray" / "s" / "early_stopping.json"
    driver = _start(tmp_path, "search", str(tmp_path / "space.yaml"), "--name", "s", "--num-cpus", "2")
    stopped = {}
    try:
        deadline = time.time() + 300
        while not stopped and driver.poll() is None and time.time() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                stopped = yaml.safe_load(rungs.read_text())["stopped"]  # JSON is YAML
            time.sleep(0.005)
        assert stopped, f"no trial was stopped (exit {driver.poll()}):\n" + (tmp_path / "search.log").read_text()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        _kill_group(driver.pid)
    (number, evaluation), = stopped.items()
    number = int(number)
    snapshot = _snapshot_statuses(rungs.parent)
    assert snapshot.get(number) != "TERMINATED", snapshot  # the decision is not in Ray's state: the window

    assert _resume(tmp_path) == 0, (tmp_path / "resume.log").read_text()
    runs = _trial_runs(tmp_path)
    numbers = sorted(int(r.data.tags[layout.TAG_OPTUNA_TRIAL]) for r in runs)
    assert numbers == list(range(TRIALS)), numbers  # every trial exactly once
    assert not [r for r in runs if r.info.status == "RUNNING"]
    run, = [r for r in runs if int(r.data.tags[layout.TAG_OPTUNA_TRIAL]) == number]
    assert run.data.tags[layout.TAG_FIDELITY] == layout.PARTIAL
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/bpc")]
    assert steps == list(range(10, 10 * evaluation + 1, 10)), steps  # logged to the stop, trained no further
    assert int(run.data.tags[layout.TAG_RESUMED_FROM]) == 10 * evaluation  # from the stop's checkpoint
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    assert study.trials[number].state.name == "PRUNED"
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
