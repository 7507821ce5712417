"""The Ray a search runs on, and what is checked about it before any trial starts.

* ``connect``: a local Ray (no address: started here, services on loopback as far as Ray allows, token
  authentication with a token file only its user can read), or the cluster this machine is a node of
  (``--address auto``, or ``HOST:PORT``). Ray Client (``ray://``) is refused: a search is a long-running
  driver, submitted as a Ray job (``--address http://HEAD:8265``, see ``jobs``).
* ``check_storage``: every node can read what the driver writes to the search's storage (a folder only
  the head has, or an object store a worker has no credentials for, fails every trial at its first
  checkpoint).
* ``check_resources``: the largest trial of the space fits on some node (or a node type the autoscaler
  can add); otherwise the search would wait forever.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import stat
import sys
import threading
import uuid
from pathlib import Path

import ray
import yaml

from hyperlab.errors import UserError
from hyperlab.search import ray_private, storage

LOOPBACK = "127.0.0.2" if sys.platform.startswith("linux") else None  # Ray rewrites 127.0.0.1 on Linux
AUTOSCALER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"  # the cluster launcher's copy on the head


def connect(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> None:
    # Quiet defaults: hyperlab shows its own progress; Tune's tables and CSV/TensorBoard loggers are noise
    # (MLflow is the record). Set here, they reach the driver and, through the job's environment, Tune.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return
    if address is not None and address.startswith("ray://"):
        raise UserError(f"--address {address}: Ray Client is not supported (a search is a long-running driver "
                        "that must outlive your laptop's connection); submit it as a Ray job with --address "
                        "http://HEAD:8265, or run it on the head node with --address auto")
    with _keeping_sigterm():
        if address is not None:
            _reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, logging_level=_log_level())
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise UserError(f"--address {address}: cannot connect to the Ray cluster ({_first_line(err)})") from None
            return
        _private_token()
        ray_private.reload_config()
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address=LOOPBACK, logging_level=_log_level())


def _log_level() -> int:
    """Ray's INFO lines ("Started a local Ray instance", Tune's "Wrote the latest version...") only with
    ``--verbose`` (``HYPERLAB_VERBOSE=1``); warnings always."""
    import logging

    level = logging.INFO if os.environ.get("HYPERLAB_VERBOSE") == "1" else logging.WARNING
    logging.getLogger("ray.tune").setLevel(level)
    return level


@contextlib.contextmanager
def _keeping_sigterm():
    """``ray.init`` puts its own SIGTERM handler in the driver (it logs and aborts); the command line's
    (end the search cleanly, KILLED and resumable) is put back."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(handler):
            signal.signal(signal.SIGTERM, handler)


def _reachable(address: str, timeout: float = 10.0) -> None:
    """A ``HOST:PORT`` address answers (Ray itself would retry a dead one for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"--address {address}: cannot connect to the Ray cluster (nothing answers there: "
                        f"{err.strerror or err})") from None


def _private_token() -> None:
    """Token authentication for the local Ray, with a token file readable by its user alone (Ray writes
    its default one with the process's umask)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # as Ray's own generator does: 256 bits


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def check_storage(experiment_path: str) -> None:
    """Every alive node reads a file the driver wrote at ``experiment_path``, or UserError naming the
    nodes that cannot and the fix."""
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = f"{experiment_path.rstrip('/')}/.reachable-{uuid.uuid4().hex}"
    storage.write_bytes(marker, b"hyperlab")
    try:
        probes = {node["NodeManagerAddress"]: _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(marker) for node in nodes}
        failed = {ip: why for ip, why in zip(probes, ray.get(list(probes.values()), timeout=120)) if why}
    finally:
        storage.delete(marker)
    if failed:
        reasons = "; ".join(f"{ip}: {why}" for ip, why in sorted(failed.items()))
        raise UserError(f"--storage {experiment_path.rsplit('/', 1)[0]}: not every node of the cluster can reach it "
                        f"({reasons}); on a multi-node cluster use an object store (--storage s3://BUCKET/PREFIX, "
                        "with credentials on every node) or a folder on a filesystem every node mounts")


@ray.remote(num_cpus=0)
def _probe(marker: str) -> str | None:
    try:
        return None if storage.read_bytes(marker) == b"hyperlab" else "the file written by the driver is not there"
    except Exception as err:  # noqa: BLE001 - credentials, endpoint, permissions: the reason is the message
        return f"{type(err).__name__}: {_first_line(err)}"


def check_resources(largest: dict[str, float], smallest: dict[str, float] | None = None) -> None:
    """The largest trial's resources ({"CPU": 2, "GPU": 0.5}) fit on some node of the cluster as it is,
    or on a node type its autoscaler can add; else UserError before anything starts."""
    capacities = [{k: float(v) for k, v in node.get("Resources", {}).items()} for node in alive_nodes()]
    capacities += _autoscaler_node_types()
    for trial in filter(None, (largest, smallest)):
        if not any(all(cap.get(key, 0.0) >= need for key, need in trial.items() if need) for cap in capacities):
            have = ", ".join(f"CPU {c.get('CPU', 0):g} GPU {c.get('GPU', 0):g}" for c in capacities) or "none"
            need = ", ".join(f"{k} {v:g}" for k, v in trial.items() if v)
            raise UserError(f"resources: a trial needs {need}, which no node of the cluster has (nodes: {have}); "
                            "lower resources.cpu / resources.gpu (or the budget that sets the GPU share), or add a "
                            "node that has them")


def _autoscaler_node_types() -> list[dict[str, float]]:
    """Resources of the node types the cluster launcher's autoscaler may add (on the head node only)."""
    if not AUTOSCALER_CONFIG.is_file():
        return []
    try:
        config = yaml.safe_load(AUTOSCALER_CONFIG.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    types = config.get("available_node_types") or {}
    return [{k: float(v) for k, v in (spec.get("resources") or {}).items()}
            for spec in types.values() if isinstance(spec, dict) and spec.get("max_workers", 0)]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
