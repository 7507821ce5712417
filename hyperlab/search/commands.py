"""``hyperlab search``, ``hyperlab resume`` and ``hyperlab validate``."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from hyperlab.config_io import read_yaml
from hyperlab.errors import UserError
from hyperlab.search.space import load_search_space, parse_search_space
from hyperlab.tracking import layout
from hyperlab.tracking.store import RUNS_DIR, init_store, resolve_tracking_uri

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SMOKE_TRIALS, SMOKE_STEPS = 2, 20


def search(args: argparse.Namespace) -> int:
    from hyperlab.search import runner

    space, base = load_search_space(args.file)  # every check before anything is created
    if args.smoke_test:
        space, base = _smoke(space, base)
    name = args.name or f"{Path(args.file).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not _NAME.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    storage = _storage(args.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    if runner.exists(storage, name) or _search_in_store(tracking_uri, name):
        raise UserError(f"a search named {name!r} already exists (under {storage} or in {tracking_uri}): "
                        f"`hyperlab resume {name}` continues it, --name starts another")
    run = runner.SearchRun(name=name, space=space, base_config=base, space_text=Path(args.file).read_text(),
                           tracking_uri=init_store(tracking_uri), storage=storage,
                           data_dir=_data_dir(args.data_dir), address=args.address, num_cpus=args.num_cpus,
                           smoke_test=args.smoke_test)
    runner.write_manifest(run)
    return _run(run, resume=False)


def resume(args: argparse.Namespace) -> int:
    from hyperlab.search import runner

    storage = _storage(args.storage)
    manifest = runner.read_manifest(storage, args.name)
    space, base = parse_search_space(manifest["space"], f"{args.name} (search space saved with the search)")
    if manifest.get("smoke_test"):
        space, base = _smoke(space, base)
    run = runner.SearchRun(name=args.name, space=space, base_config=base, space_text=manifest["space"],
                           tracking_uri=init_store(args.tracking_uri or manifest["tracking_uri"]),
                           storage=storage, data_dir=_data_dir(args.data_dir) or manifest["data_dir"],
                           address=args.address, num_cpus=args.num_cpus, smoke_test=manifest.get("smoke_test", False))
    if _search_in_store(run.tracking_uri, run.name) == "FINISHED":
        from hyperlab.analysis.commands import print_search

        print(f"search {run.name} already finished; its front:")
        print_search(run.name, run.tracking_uri)
        return 0
    return _run(run, resume=True)


def _smoke(space, base):
    """Two trials of a few steps on a small model: the whole wiring in seconds."""
    from hyperlab.training.config import smoke_overrides

    return (space.model_copy(update={"trials": SMOKE_TRIALS}),
            base.with_overrides(smoke_overrides(base, steps=SMOKE_STEPS)))


def _search_in_store(tracking_uri: str, name: str) -> str | None:
    """The status of the search's parent run in the MLflow store, None if there is none."""
    from hyperlab.tracking.read import search_status

    return search_status(tracking_uri, name)


def _run(run, resume: bool) -> int:
    from hyperlab.analysis.commands import print_search
    from hyperlab.search import runner

    print(f"{'resuming' if resume else 'search'} {run.name}: {run.space.trials} trials, "
          f"objectives {run.space.objectives}; MLflow {run.tracking_uri}")
    results = runner.run_search(run, resume=resume)
    completed = print_search(run.name, run.tracking_uri)
    print(f"\nOpen the MLflow UI on this store:  mlflow ui --backend-store-uri {run.tracking_uri}")
    if results.num_errors:
        print(f"{results.num_errors} trial(s) failed; their runs carry the error ({layout.ERROR_ARTIFACT}).")
    return 0 if completed else 1


def validate(args: argparse.Namespace) -> int:
    """Check search-space and pipeline files; exit code 2 if any is wrong."""
    from hyperlab.training import TrainConfig
    from hyperlab.config_io import validate as validate_config

    failed = False
    for file in args.files:
        try:
            data = read_yaml(file)
            if isinstance(data, dict) and "space" in data:
                load_search_space(file)
            else:
                validate_config(TrainConfig, data, file)
            print(f"ok  {file}")
        except UserError as err:  # a ConfigError names the file and key; a data error says what is missing
            print(f"hyperlab validate: error: {err}", file=sys.stderr)
            failed = True
    return 2 if failed else 0


def _storage(arg: str | None) -> str:
    """Ray's results: a URI as given, a local directory made absolute (the experiment records it)."""
    value = arg or str(RUNS_DIR / "ray")
    return value if "://" in value else str(Path(value).resolve())


def _data_dir(arg: str | None) -> str | None:
    """The data directory the driver was told about, passed to every trial; None lets each worker use
    its own default (on a cluster the driver's home directory means nothing to a worker)."""
    value = arg or os.environ.get("HYPERLAB_DATA_DIR")
    return str(Path(value).resolve()) if value else None
