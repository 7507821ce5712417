"""What stops a search from starting wrongly: one driver per search name, a failed start that leaves the
name free, resources that cannot fit, Ray Client, and a local Ray that keeps to this machine. Real local
Ray, real sqlite stores, the real command line in separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from hyperlab.tracking import layout

from conftest import REPO, descendants

pytestmark = [pytest.mark.integration, pytest.mark.long]  # each starts Ray and a driver or two
TINY = REPO / "tests" / "data" / "tiny_search.yaml"


def space(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def clean_env() -> dict:
    """This process's environment without a tracking URI (mlflow.set_tracking_uri in other tests sets one)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start(tmp_path: Path, *args: str, log: str = "driver") -> subprocess.Popen:
    env = clean_env()
    return subprocess.Popen([sys.executable, "-m", "hyperlab.cli", *args], cwd=tmp_path, env=env,
                            stdout=open(tmp_path / f"{log}.out", "w"), stderr=open(tmp_path / f"{log}.err", "w"),
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        kill(process)


def kill(process: subprocess.Popen) -> None:
    """The process's whole group (its local Ray with it), by its PID."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def trial_numbers(tmp_path: Path, name: str) -> list[int]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'hyperlab-runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")
    return sorted(int(r.data.tags[layout.TAG_OPTUNA_TRIAL]) for r in runs)


def test_two_starts_of_one_name_run_it_once(tmp_path):
    path = space(tmp_path, trials=2)
    first, second = (start(tmp_path, "search", str(path), "--name", "twice", "--num-cpus", "1", log=f"d{i}")
                     for i in (1, 2))
    codes = [finish(first), finish(second)]
    assert sorted(codes) == [0, 2], [(tmp_path / f"d{i}.err").read_text() for i in (1, 2)]
    refused = (tmp_path / f"d{codes.index(2) + 1}.err").read_text()
    assert "is being run by process" in refused or "already exists" in refused, refused
    numbers = trial_numbers(tmp_path, "twice")
    assert len(numbers) == 2 == len(set(numbers))  # every configuration trained once


def test_resume_while_the_driver_is_alive_is_refused_naming_it(tmp_path):
    path = space(tmp_path, trials=2, fixed={**yaml.safe_load(TINY.read_text())["fixed"],
                                            "schedule": {"steps": 5000, "eval_every": 50, "eval_batches": 2,
                                                         "test": False}})
    driver = start(tmp_path, "search", str(path), "--name", "alive", "--num-cpus", "1")
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (tmp_path / "hyperlab-runs" / "ray" / "alive" / "trials").exists():
            time.sleep(0.5)
        resumed = subprocess.run([sys.executable, "-m", "hyperlab.cli", "resume", "alive"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120, env=clean_env())
        assert resumed.returncode == 2, resumed.stdout + resumed.stderr
        assert f"is being run by process {driver.pid} on " in resumed.stderr
        assert driver.poll() is None  # the running search goes on, untouched
    finally:
        kill(driver)


def test_a_failed_start_leaves_nothing_and_the_name_free(tmp_path):
    path = space(tmp_path, trials=1)
    failed = subprocess.run([sys.executable, "-m", "hyperlab.cli", "search", str(path), "--name", "free",
                             "--address", "127.0.0.1:1"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env=clean_env())
    assert failed.returncode == 2 and "cannot connect to the Ray cluster" in failed.stderr, failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # no store, no manifest, no results
    assert finish(start(tmp_path, "search", str(path), "--name", "free", "--num-cpus", "1")) == 0, \
        (tmp_path / "driver.err").read_text()
    assert len(trial_numbers(tmp_path, "free")) == 1


@pytest.mark.parametrize("resources, num_gpus, expected", [
    ({"cpu": 64}, None, "a trial needs CPU 64, which no node of the cluster has (nodes: CPU 1 GPU 0)"),
    ({"cpu": 1, "gpu": 1}, None, "a trial needs CPU 1, GPU 1, which no node"),
    ({"cpu": 1, "gpu": 3, "max_gpu": 3}, 2,
     "a trial needs CPU 1, GPU 3, which no node of the cluster has (nodes: CPU 1 GPU 2)"),
])
def test_resources_no_node_has_are_refused_before_anything_starts(resources, num_gpus, expected, tmp_path):
    path = space(tmp_path, trials=1, resources=resources)
    argv = [sys.executable, "-m", "hyperlab.cli", "search", str(path), "--name", "big", "--num-cpus", "1"]
    argv += ["--num-gpus", str(num_gpus)] if num_gpus is not None else []
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=clean_env())
    assert out.returncode == 2 and expected in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_ray_client_is_refused_with_the_way_that_works(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hyperlab.cli", "search", str(TINY), "--address", "ray://head:10001"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=clean_env())
    assert out.returncode == 2 and "Ray Client is not supported" in out.stderr and "http://HEAD:8265" in out.stderr


@pytest.mark.long
def test_trials_share_logical_gpus_as_their_fractions_allow(tmp_path):
    """Ray can declare GPUs on a CPU machine: four trials of half a GPU each run at once on two."""
    path = space(tmp_path, trials=4, concurrency=4, budget=None, resources={"cpu": 0.5, "gpu": 0.5},
                 fixed={**yaml.safe_load(TINY.read_text())["fixed"],
                        "schedule": {"steps": 100, "eval_every": 50, "eval_batches": 2, "test": False}})
    assert finish(start(tmp_path, "search", str(path), "--name", "gpus", "--num-cpus", "2", "--num-gpus", "2"),
                  timeout=600) == 0, (tmp_path / "driver.err").read_text()
    client = MlflowClient(f"sqlite:///{tmp_path / 'hyperlab-runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpus").experiment_id
    runs = client.search_runs([experiment], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    assert len(spans) == 4 and max(start for start, _ in spans) < min(end for _, end in spans)  # all at once


def test_the_local_ray_keeps_to_this_machine_and_its_token_to_its_user(tmp_path):
    """A local search's Ray: token authentication on, its token file readable by its user alone, its HTTP
    agents on loopback. (Ray 2.60's gRPC servers, GCS and raylet among them, bind every interface whatever
    address they are given: the README says so; the token is what guards them.)"""
    token = tmp_path / "token"
    code = ("import os, time; from hyperlab.search import cluster; cluster.connect(None, 1); "
            "print(os.environ['RAY_AUTH_MODE'], flush=True); time.sleep(60)")
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_AUTH_MODE", None)
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "token"
        assert token.stat().st_mode & 0o777 == 0o600
        listeners = _listeners({driver.pid, *descendants(driver.pid)})
        http_agents = [(addr, name) for addr, name in listeners if "DashboardA" in name or "RuntimeEnv" in name]
        wildcard = {name for addr, name in listeners if not addr.startswith("127.")}
        assert http_agents and any(addr.startswith("127.") for addr, _ in http_agents)
        assert wildcard <= {"gcs_server", "raylet", "python", "ray::IDLE", "ray::DashboardA"} | {
            name for name in wildcard if name.startswith("ray::")}, wildcard
    finally:
        kill(driver)


def _listeners(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of the TCP sockets ``pids`` listen on (from ``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        for user in fields[5:]:
            for part in user.split("),("):
                if "pid=" in part:
                    pid = int(part.split("pid=")[1].split(",")[0])
                    if pid in pids:
                        found.append((fields[3], part.split('"')[1]))
    return found
