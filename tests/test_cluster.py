"""Searches on a real cluster, all on this machine and on loopback only: a two-node Ray cluster (``ray
start --head`` on 127.0.0.2 and ``ray start --address`` on 127.0.0.3, each with its own temp dir, ports
and one CPU, token authentication), a real ``mlflow server`` (a sqlite database, artifacts in the
bucket) and a real S3-compatible server (moto's server mode). Every service is started and stopped by
the fixtures, by process group. Searches are launched the remote way, as Ray jobs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.long

BIN = Path(sys.executable).parent
BUCKET = "hyperlab-test"
TINY = yaml.safe_load((REPO / "tests" / "data" / "tiny_search.yaml").read_text())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


class Service:
    """A process group started and stopped by PID."""

    def __init__(self, argv: list[str], env: dict, log: Path, cwd: Path | None = None):
        self.argv, self.env, self.log, self.cwd = argv, env, log, cwd
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=open(self.log, "a"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self, signum=signal.SIGTERM, grace: float = 20) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
            self.process.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment every node, server and client shares: S3 credentials and endpoint, Ray's token."""
    root = tmp_path_factory.mktemp("cluster")
    token = root / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "RAY_USAGE_STATS_ENABLED": "0", "HYPERLAB_ROOT": str(root)}


@pytest.fixture(scope="module")
def s3(env):
    """moto's S3 server on loopback, with the test bucket; its endpoint goes into the shared environment."""
    port = free_port()
    root = Path(env["HYPERLAB_ROOT"])
    server = Service([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env, root / "s3.log").start()
    endpoint = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(endpoint, timeout=2), 60, "the S3 server")
    env.update(AWS_ENDPOINT_URL=endpoint, MLFLOW_S3_ENDPOINT_URL=endpoint)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's postgresql package puts it."""
    found = shutil.which(name) or sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return found if isinstance(found, str) or not found else str(found[-1])


class Postgres:
    """A PostgreSQL server on loopback, in a folder of its own (run as ``nobody`` when the tests run as
    root: the server refuses root; pytest's folders are private to root, so the data lies in /tmp)."""

    def __init__(self, env: dict, root: Path):
        self.port, self.folder = free_port(), Path(tempfile.mkdtemp(prefix="hl-pg-"))
        self.log = root / "pg.log"
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "nobody")
        self.env = {**env, "PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "postgres"}
        self.service = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> Postgres:
        data = self.folder / "data"
        subprocess.run([*self.as_user, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                       check=True, capture_output=True, env=self.env)
        self.service = Service([*self.as_user, _pg_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p",
                                str(self.port), "-k", str(self.folder)], self.env, self.log).start()
        wait_until(lambda: subprocess.run(["psql", "-c", "select 1"], env=self.env, capture_output=True).returncode == 0,
                   60, "PostgreSQL")
        for database in ("mlflow", "optuna"):
            subprocess.run(["createdb", database], env=self.env, check=True, capture_output=True)
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(signal.SIGINT)  # a fast shutdown
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(env):
    if _pg_bin("initdb") is None or _pg_bin("postgres") is None:
        pytest.skip("no PostgreSQL server binaries (Debian's postgresql package) here")
    server = Postgres(env, Path(env["HYPERLAB_ROOT"])).start()
    yield server
    server.stop()


class MlflowServer:
    def __init__(self, env: dict, root: Path, backend: str):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.service = Service([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                                "--backend-store-uri", backend,
                                "--default-artifact-root", f"s3://{BUCKET}/mlflow", "--no-serve-artifacts",
                                "--workers", "1"], env, root / "mlflow.log")

    def start(self) -> MlflowServer:
        self.service.start()
        wait_until(lambda: urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200, 120, "mlflow server")
        return self

    def stop(self) -> None:
        self.service.stop()


@pytest.fixture(scope="module")
def mlflow_server(env, s3, postgres):
    """A real MLflow tracking server on PostgreSQL that hands out s3:// artifact locations (clients upload
    with boto3)."""
    server = MlflowServer(env, Path(env["HYPERLAB_ROOT"]), postgres.url("mlflow")).start()
    yield server
    server.stop()


class RayCluster:
    def __init__(self, env: dict, root: Path):
        # Ray's socket paths must fit in 107 bytes: its temp dirs go under a short folder of their own
        self.env, self.root = env, Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
        self.logs = root
        self.port, self.dashboard = free_port("127.0.0.2"), free_port("127.0.0.2")
        self.address, self.jobs = f"127.0.0.2:{self.port}", f"http://127.0.0.2:{self.dashboard}"
        self.head = self.worker = None

    def start_head(self) -> None:
        self.head = Service([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.2",
                             "--port", str(self.port), "--num-cpus", "1", "--temp-dir", str(self.root / "ray-head"),
                             "--dashboard-host", "127.0.0.2", "--dashboard-port", str(self.dashboard),
                             "--dashboard-agent-listen-port", str(free_port("127.0.0.2")),
                             "--min-worker-port", "23000", "--max-worker-port", "23099", "--include-dashboard", "true",
                             "--disable-usage-stats"], self.env, self.logs / "ray-head.log").start()
        wait_until(lambda: self.alive_nodes() >= 1, 120, "the Ray head node")

    def start_worker(self, wrapper: list[str] = ()) -> None:
        self.worker = Service([*wrapper, str(BIN / "ray"), "start", "--block", "--address", self.address,
                               "--node-ip-address", "127.0.0.3", "--num-cpus", "1",
                               "--dashboard-agent-listen-port", str(free_port("127.0.0.3")),
                               "--min-worker-port", "23100", "--max-worker-port", "23199", "--disable-usage-stats"],
                              self.env, self.logs / "ray-worker.log").start()

    def alive_nodes(self) -> int:
        code = (f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, count: int) -> None:
        wait_until(lambda: self.alive_nodes() == count, 180, f"a Ray cluster of {count} nodes")

    def stop(self) -> None:
        for service in (self.worker, self.head):
            if service is not None:
                service.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(env, s3):
    ray_cluster = RayCluster(env, Path(env["HYPERLAB_ROOT"]))
    ray_cluster.start_head()
    ray_cluster.start_worker()
    try:
        ray_cluster.wait_for_nodes(2)
        yield ray_cluster
    finally:
        ray_cluster.stop()


def hyperlab(env: dict, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyperlab.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def space_file(folder: Path, **changes) -> Path:
    data = json.loads(json.dumps(TINY))
    data.update(changes)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trial_runs(uri: str, name: str) -> list:
    from mlflow import MlflowClient

    from hyperlab.tracking import layout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")


def test_a_search_submitted_as_a_ray_job_uses_both_nodes_the_bucket_and_the_server(cluster, mlflow_server, s3,
                                                                                     postgres, env, tmp_path,
                                                                                     monkeypatch):
    import optuna
    from mlflow import MlflowClient

    from hyperlab.tracking import layout

    space = space_file(tmp_path, trials=4, concurrency=2, budget=None)
    out = hyperlab(env, tmp_path, "search", str(space), "--name", "remote", "--address", cluster.jobs,
                   "--storage", f"s3://{BUCKET}/ray", "--tracking-uri", mlflow_server.uri,
                   "--optuna-storage", postgres.url("optuna"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted search remote as Ray job" in out.stdout

    runs = trial_runs(mlflow_server.uri, "remote")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags[layout.TAG_NODE] for r in runs} == {"127.0.0.2", "127.0.0.3"}  # trials on both nodes
    for run in runs:  # one checkpoint per trial in the bucket, its final one
        checkpoint = run.data.tags[layout.TAG_CHECKPOINT]
        assert checkpoint.startswith(f"s3://{BUCKET}/ray/remote/trials/") and checkpoint.endswith("/checkpoint-20")
    keys = s3_keys(s3, "ray/remote/trials/")
    assert {k.split("/")[4] for k in keys if "/checkpoint-" in k} == {"checkpoint-20"}
    assert not [k for k in s3_keys(s3, "ray/remote/") if "/work/" in k]  # the trainer's folder stays local
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                "MLFLOW_S3_ENDPOINT_URL"):  # this process reads the artifacts in the bucket too
        monkeypatch.setenv(key, env[key])
    client = MlflowClient(mlflow_server.uri)
    [parent] = client.search_runs([client.get_experiment_by_name("remote").experiment_id],
                                  f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_SEARCH}'")
    assert parent.info.status == "FINISHED" and parent.info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")} >= {
        layout.FRONT_TABLE_ARTIFACT, layout.TRADEOFF_PNG_ARTIFACT}
    study = optuna.load_study(study_name="remote", storage=postgres.url("optuna"))
    complete = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}
    assert complete == {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): [r.data.metrics["model/n_params"],
                                                                    r.data.metrics["val/bpc"]] for r in runs}

    # the analysis commands read the server
    listed = hyperlab(env, tmp_path, "list", "--tracking-uri", mlflow_server.uri)
    assert listed.returncode == 0 and "remote" in listed.stdout
    front = hyperlab(env, tmp_path, "pareto", "remote", "--tracking-uri", mlflow_server.uri, "--out",
                     str(tmp_path / "front.csv"))
    assert front.returncode == 0 and (tmp_path / "front.csv").is_file()
    status = hyperlab(env, tmp_path, "status", "remote", "--tracking-uri", mlflow_server.uri)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "complete 4" in status.stdout

    # a model trained against the server, sampled back from it (its checkpoint in the bucket)
    trained = hyperlab(env, tmp_path, "train", str(REPO / "pipelines" / "quick_charlm.yaml"), "--tracking-uri",
                       mlflow_server.uri, "--out", str(tmp_path / "train"))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    train_run = client.search_runs([client.get_experiment_by_name("hyperlab-train").experiment_id])[0].info.run_id
    sampled = hyperlab(env, tmp_path, "sample", train_run, "--tracking-uri", mlflow_server.uri, "--length", "50",
                       "--out", str(tmp_path / "sample"))
    assert sampled.returncode == 0 and len((tmp_path / "sample" / "sample.txt").read_text()) == 50, sampled.stderr
    # a search trial's model too, by a prefix of its run id (its model.pt in the bucket, through the server)
    trial = runs[0].info.run_id
    sampled = hyperlab(env, tmp_path, "sample", trial[:8], "--tracking-uri", mlflow_server.uri, "--length", "40",
                       "--out", str(tmp_path / "trial-sample"))
    assert sampled.returncode == 0, sampled.stdout + sampled.stderr
    assert len((tmp_path / "trial-sample" / "sample.txt").read_text()) == 40
    assert any(k.endswith(f"{trial}/artifacts/checkpoint/model.pt") for k in s3_keys(s3, "mlflow/"))


def test_a_lost_worker_node_s_trial_continues_on_the_head_from_its_checkpoint(cluster, mlflow_server, env, tmp_path):
    from hyperlab.tracking import layout

    space = space_file(tmp_path, trials=2, concurrency=2, budget=None, retries=2,
                       fixed={**TINY["fixed"], "schedule": {"steps": 4000, "eval_every": 200, "eval_batches": 2,
                                                            "test": False}},  # the worker's trial outlasts the poll
                       space={"model.n_z": {"type": "choice", "values": [2]}, "model.hidden_size":  # two configurations
                              {"type": "choice", "values": [16, 17]}, "model.hyper_size": {"type": "choice", "values": [8]}})
    optuna_db = Path(env["HYPERLAB_ROOT"]) / "optuna-b.db"
    out = hyperlab(env, tmp_path, "search", str(space), "--name", "lost", "--address", cluster.jobs, "--detach",
                   "--storage", f"s3://{BUCKET}/ray", "--tracking-uri", mlflow_server.uri,
                   "--optuna-storage", f"sqlite:///{optuna_db}")
    assert out.returncode == 0, out.stdout + out.stderr

    def on_worker_with_a_checkpoint():
        runs = trial_runs(mlflow_server.uri, "lost")
        return any(r.data.tags.get(layout.TAG_NODE) == "127.0.0.3" and r.data.metrics.get("val/bpc") for r in runs)
    wait_until(on_worker_with_a_checkpoint, 300, "a trial with a checkpoint on the worker node")
    cluster.worker.stop(signal.SIGKILL)  # the node is gone, as a preempted spot instance
    try:
        wait_until(lambda: "SUCCEEDED" in hyperlab(env, tmp_path, "status", "lost", "--tracking-uri",
                                                   mlflow_server.uri).stdout, 600, "the search's end")
    finally:
        cluster.start_worker()
        cluster.wait_for_nodes(2)
    runs = trial_runs(mlflow_server.uri, "lost")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    moved = [r for r in runs if r.data.tags.get(layout.TAG_RETRIES)]
    assert moved and all(r.data.tags[layout.TAG_NODE] == "127.0.0.2" for r in moved), [  # retried on the head
        {k: v for k, v in r.data.tags.items() if k.startswith("hyperlab.")} for r in runs]
    assert all(int(r.data.tags[layout.TAG_RESUMED_FROM]) >= 200 for r in moved)  # from its checkpoint
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/bpc")]
        assert steps == list(range(200, 4001, 200))  # every evaluation once


def test_a_stopped_search_survives_a_server_outage_and_resumes_from_another_folder(cluster, mlflow_server, env,
                                                                                    tmp_path):
    """The job is stopped (its driver gets SIGTERM: the search ends KILLED), then resumed from another
    folder with only its name and the server; meanwhile the MLflow server is down for 20 s."""
    from mlflow import MlflowClient

    from hyperlab.tracking import layout

    space = space_file(tmp_path, trials=4, concurrency=2, budget=None,
                       fixed={**TINY["fixed"], "schedule": {"steps": 15000, "eval_every": 1500, "eval_batches": 2,
                                                            "test": False}})  # trials outlast the outage
    optuna_db = Path(env["HYPERLAB_ROOT"]) / "optuna-c.db"
    out = hyperlab(env, tmp_path, "search", str(space), "--name", "stopped", "--address", cluster.jobs, "--detach",
                   "--storage", f"s3://{BUCKET}/ray", "--tracking-uri", mlflow_server.uri,
                   "--optuna-storage", f"sqlite:///{optuna_db}")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: any(r.data.metrics.get("val/bpc") for r in trial_runs(mlflow_server.uri, "stopped")), 300,
               "a first evaluation")
    mlflow_server.stop()  # an outage: the driver buffers and retries
    time.sleep(20)
    mlflow_server.start()
    stop = hyperlab(env, tmp_path, "stop", "stopped", "--tracking-uri", mlflow_server.uri)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    wait_until(lambda: "driver: none running" in hyperlab(env, tmp_path, "status", "stopped", "--tracking-uri",
                                                          mlflow_server.uri).stdout, 120, "the driver's end")
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("stopped").experiment_id
    [parent] = client.search_runs([experiment], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_SEARCH}'")
    log = hyperlab(env, tmp_path, "logs", "stopped", "--tracking-uri", mlflow_server.uri).stdout
    assert parent.info.status == "KILLED", log
    assert not [r for r in trial_runs(mlflow_server.uri, "stopped") if r.info.status == "RUNNING"], log

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = hyperlab(env, elsewhere, "resume", "stopped", "--tracking-uri", mlflow_server.uri)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = trial_runs(mlflow_server.uri, "stopped")
    numbers = [r.data.tags[layout.TAG_OPTUNA_TRIAL] for r in runs]
    assert len(numbers) == len(set(numbers)) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # nothing lost to the outage or the stop: every evaluation logged, once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/bpc")]
        assert steps == list(range(1500, 15001, 1500)), steps


def test_storage_that_a_node_cannot_reach_is_refused_before_any_trial(env, tmp_path):
    """A local folder on a multi-node cluster: the worker node (its own mount namespace here, with the
    folder hidden under a tmpfs, as on another machine) cannot read it; the search stops with the reason and
    the fix before anything runs."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("unshare -m (a private mount namespace) is not available here")
    root = tmp_path / "c"
    root.mkdir()
    hidden = tmp_path / "head-only"
    hidden.mkdir()
    cluster = RayCluster(env, root)
    cluster.start_head()
    cluster.start_worker(wrapper=["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{hidden}" && exec "$0" "$@"'])
    try:
        cluster.wait_for_nodes(2)
        out = hyperlab({**env, "RAY_ADDRESS": cluster.address}, tmp_path, "search", str(space_file(tmp_path)),
                       "--name", "local", "--address", cluster.address, "--storage", str(hidden / "ray"),
                       "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    finally:
        cluster.stop()
    assert out.returncode == 2, out.stdout + out.stderr
    assert "not every node of the cluster can reach it (127.0.0.3:" in out.stderr and "s3://" in out.stderr
    assert not (hidden / "ray" / "local" / "trials").exists()
