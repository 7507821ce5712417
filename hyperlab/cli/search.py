"""``hyperlab search``, ``resume``, ``validate``, and for searches running as Ray jobs ``status``, ``logs``
and ``stop``."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from hyperlab.config_io import read_yaml
from hyperlab.errors import ConfigError, UserError
from hyperlab.tracking import layout

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SMOKE_TRIALS, SMOKE_STEPS = 2, 20


def load_search_file(file: str, data_dir: str | None, with_data: bool = True):
    """A search-space file as ``search`` accepts it: (space, base training config), or a ConfigError
    naming the file and the key (nothing created). ``validate`` checks files with this too.
    ``with_data`` False checks the file alone (a job's driver checks the data on the cluster)."""
    from hyperlab.search.space import check_budget, load_search_space
    from hyperlab.training.loop import preflight

    space, base = load_search_space(file)
    if not with_data:
        return space, base
    try:
        preflight(base, data_dir, check_device=False)  # the trials' device is the workers' to check
    except ConfigError as err:
        raise ConfigError(file, [(f"fixed.{key}", msg) for key, msg in err.problems]) from None
    check_budget(space, base, data_dir, file)
    return space, base


def search(args: argparse.Namespace) -> int:
    name = args.name or f"{Path(args.file).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not _NAME.match(name):
        raise UserError(f"--name {name!r}: use up to 100 letters, digits, '.', '_' and '-', starting with a "
                        "letter or digit")
    if args.address and args.address.startswith(("http://", "https://")):
        return _submit_search(args, name)
    from hyperlab.search.home import resolve

    space, base = load_search_file(args.file, _data_dir(args.data_dir))  # every check before anything starts
    if args.smoke_test:
        space, base = _smoke(space, base)
    home = resolve(name, args.tracking_uri, args.storage, args.optuna_storage, args.address, args.data_dir,
                   args.smoke_test, args.num_cpus, job_address=args.job_address, num_gpus=args.num_gpus)
    from hyperlab.search.runner import search_started

    if search_started(home):  # checked again under the search's lease, once Ray is up
        raise UserError(f"a search named {name!r} already exists (in {home.tracking_uri}, under {home.storage}): "
                        f"`hyperlab resume {name}` continues it, --name starts another")
    return _run(home, space, base, Path(args.file).read_text(), resume=False)


def _leave_job_folder() -> None:
    """A Ray job's driver starts in the job's working directory, which Ray may clean up while the
    search still runs (then Tune's last step fails on ``os.getcwd``); once the job's files are read,
    the driver works from the home folder."""
    if "runtime_resources" in Path.cwd().parts:
        os.chdir(Path.home())


def _submit_search(args: argparse.Namespace, name: str) -> int:
    """Check the file, then submit the search to the cluster's job server and follow its log."""
    from hyperlab.search import jobs

    load_search_file(args.file, None, with_data=False)
    if args.tracking_uri and _search_status(args.tracking_uri, name) is not None:
        raise UserError(f"a search named {name!r} already exists in {args.tracking_uri}")
    argv = ["search", Path(args.file).name, "--name", name, "--address", "auto", "--job-address", args.address]
    argv += _passed(args, ("storage", "tracking_uri", "optuna_storage", "data_dir"))
    argv += ["--smoke-test"] if args.smoke_test else []
    job = jobs.submit(args.address, name, argv, [Path(args.file)])
    print(f"submitted search {name} as Ray job {job} to {args.address}\n"
          f"  it runs on the cluster's head; `hyperlab logs {name} --address {args.address}` follows it, "
          f"`hyperlab stop {name} --address {args.address}` ends it (resumable)")
    if args.detach:
        return 0
    status = jobs.follow(args.address, job)
    return 0 if status in ("SUCCEEDED", "RUNNING") else 1


def resume(args: argparse.Namespace) -> int:
    from hyperlab.search.home import SearchHome
    from hyperlab.search.space import parse_search_space
    from hyperlab.tracking.read import read_manifest, read_parent_text
    from hyperlab.tracking.store import resolve_tracking_uri

    tracking = resolve_tracking_uri(args.tracking_uri)
    home = SearchHome.from_manifest(read_manifest(args.name, tracking), f"search {args.name}")
    home = home.with_overrides(tracking_uri=args.tracking_uri, storage=args.storage, address=args.address,
                               num_cpus=args.num_cpus, num_gpus=args.num_gpus, data_dir=_data_dir(args.data_dir))
    if _search_status(home.tracking_uri, home.name) == "FINISHED":
        from hyperlab.cli.analysis import print_search

        print(f"search {home.name} already finished; its front:")
        print_search(home.name, home.tracking_uri)
        return 0
    job_address = args.address if args.address and args.address.startswith("http") else \
        (home.job_address if args.address is None else None)
    if job_address:
        return _submit_resume(args, home, job_address)
    space_text = read_parent_text(home.name, home.tracking_uri, layout.SEARCH_SPACE_ARTIFACT)
    space, base = parse_search_space(space_text, f"{home.name} (search space saved with the search)")
    if home.smoke_test:
        space, base = _smoke(space, base)
    return _run(home, space, base, space_text, resume=True)


def _submit_resume(args: argparse.Namespace, home, job_address: str) -> int:
    from hyperlab.search import jobs

    argv = ["resume", home.name, "--address", "auto", "--tracking-uri", home.tracking_uri]
    job = jobs.submit(job_address, home.name, argv, [])
    print(f"submitted the resumed search {home.name} as Ray job {job} to {job_address}")
    if getattr(args, "detach", False):
        return 0
    return 0 if jobs.follow(job_address, job) in ("SUCCEEDED", "RUNNING") else 1


def _passed(args: argparse.Namespace, keys: tuple[str, ...]) -> list[str]:
    argv = []
    for key in keys:
        if getattr(args, key, None):
            argv += [f"--{key.replace('_', '-')}", getattr(args, key)]
    return argv


def _smoke(space, base):
    """Two trials of a few steps on a small model: the whole wiring in seconds."""
    from hyperlab.training.config import smoke_overrides

    return (space.model_copy(update={"trials": SMOKE_TRIALS}),
            base.with_overrides(smoke_overrides(base, steps=SMOKE_STEPS)))


def _search_status(tracking_uri: str, name: str) -> str | None:
    """The status of the search's parent run in the MLflow store, None if there is none."""
    from hyperlab.tracking.read import search_status

    return search_status(tracking_uri, name)


def _run(home, space, base, space_text: str, resume: bool) -> int:
    from hyperlab.cli.analysis import print_search
    from hyperlab.search import runner

    _leave_job_folder()
    print(f"{'resuming' if resume else 'search'} {home.name}: {space.trials} trials, "
          f"objectives {space.objectives}; MLflow {home.tracking_uri}")
    outcome = runner.run_search(home, space, base, space_text, resume=resume)
    completed = print_search(home.name, home.tracking_uri)
    print_ui_pointer(home.name, home.tracking_uri)
    if outcome.errors:
        print(f"{outcome.errors} trial(s) failed; their runs carry the error ({layout.ERROR_ARTIFACT}).")
    if not outcome.complete:
        from hyperlab.cli import exit_now_if_ray

        print(f"search {home.name} was interrupted; `hyperlab resume {home.name}` continues it", file=sys.stderr)
        return exit_now_if_ray(130)
    return 0 if completed else 1


def print_ui_pointer(name: str, tracking_uri: str) -> None:
    """Where the search's runs open in the MLflow UI. MLflow 3's UI starts in its GenAI view whatever
    the experiment's kind: the link asks for the model-training view (``workflowType=machine_learning``)."""
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    if experiment is None:
        return
    page = f"#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        print(f"\nThe search in the MLflow UI: {tracking_uri.rstrip('/')}/{page}")
    else:
        print(f"\nOpen the MLflow UI on this store:  mlflow ui --backend-store-uri {tracking_uri}\n"
              f"then the search's runs:  http://127.0.0.1:5000/{page}")


def validate(args: argparse.Namespace) -> int:
    """Check search-space and pipeline files as ``search`` and ``train`` would; exit code 2 if any is wrong."""
    from hyperlab.cli.train import load_pipeline

    failed = False
    for file in args.files:
        try:
            data = read_yaml(file)
            if isinstance(data, dict) and "space" in data:
                load_search_file(file, _data_dir(args.data_dir))
            else:
                load_pipeline(file, args.data_dir)
            print(f"ok  {file}")
        except UserError as err:  # a ConfigError names the file and key; a data error says what is missing
            print(f"hyperlab validate: error: {err}", file=sys.stderr)
            failed = True
    return 2 if failed else 0


def status(args: argparse.Namespace) -> int:
    """Where a search stands: its MLflow record, its driver's lease, and its Ray job if it runs as one."""
    from hyperlab.cli.analysis import search_summary
    from hyperlab.search.home import SearchHome
    from hyperlab.search.lease import Lease
    from hyperlab.search.study_storage import lease_url
    from hyperlab.tracking.read import read_manifest
    from hyperlab.tracking.store import resolve_tracking_uri

    tracking = resolve_tracking_uri(args.tracking_uri)
    home = SearchHome.from_manifest(read_manifest(args.name, tracking), f"search {args.name}")
    _, status_, complete, partial, failed, running, wall, best = search_summary(args.name, tracking)
    print(f"search {args.name}: {status_}; trials complete {complete}, partial {partial}, failed {failed}, "
          f"running {running}; wall time {wall}; best: {best}")
    try:
        held = Lease(lease_url(home.optuna_storage), home.name).current()
        print(f"driver: {held[0]}" if held and held[1] > time.time() and not held[0].is_gone() else "driver: none running")
    except Exception as err:  # noqa: BLE001 - the database may be reachable from the cluster only
        print(f"driver: unknown ({type(err).__name__}: the Optuna database {home.optuna_storage} is not reachable here)")
    address = args.address or home.job_address
    if address and address.startswith("http"):
        from hyperlab.search import jobs

        job = jobs.latest_job(address, args.name)
        print(f"Ray job {job.submission_id} on {address}: {job.status}")
    return 0


def logs(args: argparse.Namespace) -> int:
    """Print (``--follow``: and follow) the log of a search's latest Ray job."""
    from hyperlab.search import jobs

    address = _job_address(args)
    job = jobs.latest_job(address, args.name)
    if args.follow:
        jobs.follow(address, job.submission_id)
    else:
        print(jobs.client(address).get_job_logs(job.submission_id), end="")
    return 0


def stop(args: argparse.Namespace) -> int:
    """Stop a search's Ray job: its driver ends the search KILLED, resumable with ``hyperlab resume``."""
    from hyperlab.search import jobs

    address = _job_address(args)
    job = jobs.latest_job(address, args.name)
    jobs.client(address).stop_job(job.submission_id)
    print(f"stopping Ray job {job.submission_id}; `hyperlab resume {args.name}` continues the search")
    return 0


def _job_address(args: argparse.Namespace) -> str:
    if args.address:
        return args.address
    from hyperlab.search.home import SearchHome
    from hyperlab.tracking.read import read_manifest
    from hyperlab.tracking.store import resolve_tracking_uri

    home = SearchHome.from_manifest(read_manifest(args.name, resolve_tracking_uri(args.tracking_uri)), args.name)
    if not home.job_address:
        raise UserError(f"search {args.name!r} does not run as a Ray job; pass --address http://HEAD:8265")
    return home.job_address


def _data_dir(arg: str | None) -> str | None:
    """The data directory the driver was told about, passed to every trial; None lets each worker use
    its own default (on a cluster the driver's home directory means nothing to a worker)."""
    value = arg or os.environ.get("HYPERLAB_DATA_DIR")
    return str(Path(value).resolve()) if value else None
