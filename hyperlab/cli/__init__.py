"""The ``hyperlab`` command line: argparse, console output and run lifecycles, at the edge.

Each command is a function in one of this package's modules, imported only when that command runs
(``hyperlab pareto`` never loads torch or Ray). Errors a user can fix print one line and exit 2;
Ctrl-C and SIGTERM end a command cleanly (its runs marked KILLED) with 130 and 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from hyperlab import __version__
from hyperlab.errors import UserError

DESCRIPTION = ("hyperlab maps the trade-offs of HyperNetworks: multi-objective searches on Ray Tune and "
               "Optuna, every trial tracked in MLflow, Pareto fronts and their comparison.")
EPILOG = """examples:
  hyperlab search search_spaces/quickstart.yaml          ten small HyperLSTMs on a local Ray
  hyperlab resume quickstart-20261201-101500             continue an interrupted search
  hyperlab pareto quickstart-20261201-101500 --out front.csv
  hyperlab train pipelines/quick_charlm.yaml             one model, one MLflow run
  hyperlab validate search_spaces/*.yaml pipelines/*.yaml
"""

# command -> (module, function, help)
COMMANDS = {
    "search": ("hyperlab.cli.search", "search", "run a search described by a search-space YAML file"),
    "resume": ("hyperlab.cli.search", "resume", "resume an interrupted search by name"),
    "validate": ("hyperlab.cli.search", "validate", "check search-space and pipeline YAML files"),
    "train": ("hyperlab.cli.train", "train", "train one model from a pipeline YAML file"),
    "sample": ("hyperlab.cli.train", "sample", "sample text (and the activity figure) from a trained run"),
    "pareto": ("hyperlab.cli.analysis", "pareto", "print (or save) a search's Pareto front"),
    "compare": ("hyperlab.cli.analysis", "compare", "compare the fronts of several searches"),
    "list": ("hyperlab.cli.analysis", "list_searches", "list the searches in an MLflow store"),
    "status": ("hyperlab.cli.search", "status", "where a search stands: its trials, its driver, its Ray job"),
    "logs": ("hyperlab.cli.search", "logs", "the log of a search running as a Ray job"),
    "stop": ("hyperlab.cli.search", "stop", "stop a search running as a Ray job (resumable)"),
}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that cleanup runs."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage dump) and exits with 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite:///hyperlab-runs/mlflow.db)")


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (default: $HYPERLAB_DATA_DIR, "
                   "else ~/.cache/hyperlab/data)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hyperlab", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hyperlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    p = {name: sub.add_parser(name, help=help_, description=help_) for name, (_, _, help_) in COMMANDS.items()}

    s = p["search"]
    s.add_argument("file", help="search-space YAML file")
    s.add_argument("--name", help="search name (default: the file's stem plus a timestamp)")
    s.add_argument("--address", help="where to run: http://HEAD:8265 submits the search as a Ray job (from a "
                   "laptop); 'auto' joins the cluster this machine is a node of (default: a local Ray)")
    s.add_argument("--storage", metavar="DIR_OR_URI", help="Ray's results and the trials' checkpoints: a folder "
                   "or s3://BUCKET/PREFIX (default: $HYPERLAB_STORAGE, else ray/ beside a sqlite MLflow store)")
    s.add_argument("--optuna-storage", metavar="URL|FILE", help="the Optuna study: a database, e.g. "
                   "postgresql://HOST/optuna, or a journal file (default: $HYPERLAB_OPTUNA_STORAGE, else the "
                   "journal optuna.log beside a sqlite MLflow store)")
    s.add_argument("--smoke-test", action="store_true", help="shrink the search to seconds (2 trials, a few steps)")
    s.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray (default: all)")
    s.add_argument("--num-gpus", type=non_negative_int, help="GPUs of the local Ray (default: those it finds)")
    s.add_argument("--detach", action="store_true", help="with --address http://...: submit and return at once")
    s.add_argument("--job-address", help=argparse.SUPPRESS)  # set in a Ray job's own command line
    r = p["resume"]
    r.add_argument("name", help="name of the search to resume")
    r.add_argument("--address", help="where to run it (default: where it ran; a search submitted as a Ray job "
                   "is submitted again)")
    r.add_argument("--storage", metavar="DIR_OR_URI", help="where the search keeps its Ray results, if they moved "
                   "(default: as the search recorded)")
    r.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray (default: all)")
    r.add_argument("--num-gpus", type=non_negative_int, help="GPUs of the local Ray (default: those it finds)")
    r.add_argument("--detach", action="store_true", help="with a Ray job: submit and return at once")
    for name in ("status", "logs", "stop"):
        p[name].add_argument("name", help="search name")
        p[name].add_argument("--address", help="the cluster's job server, http://HEAD:8265 (default: as the "
                             "search recorded)")
    p["logs"].add_argument("--follow", action="store_true", help="keep printing the log as it grows")
    p["validate"].add_argument("files", nargs="+", help="search-space or pipeline YAML files")

    t = p["train"]
    t.add_argument("file", help="pipeline (training config) YAML file")
    t.add_argument("--out", metavar="DIR", help="folder for the checkpoints (default: hyperlab-runs/train/RUN_ID)")
    a = p["sample"]
    a.add_argument("run_id", help="MLflow run id, or a unique prefix of one, of a trained char or handwriting "
                   "model: a "
                   "`hyperlab train` run or a search trial (as `hyperlab pareto` lists them)")
    a.add_argument("--length", type=positive_int, default=500,
                   help="characters (or, for a handwriting model, pen points) to generate (default: 500)")
    a.add_argument("--bias", type=float, default=0.0,
                   help="handwriting: Graves' sampling bias, 0 the model's own spread, larger neater (default: 0)")
    a.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature: below 1 sharper, above 1 more random (default: 1)")
    a.add_argument("--primer", default="", help="text the model reads before it generates (default: none)")
    a.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    a.add_argument("--out", metavar="DIR", default=".", help="folder for sample.txt and activity.png (default: .)")

    p["pareto"].add_argument("name", help="search name")
    p["pareto"].add_argument("--out", metavar="FILE", help="also write the front to FILE.parquet or FILE.csv")
    p["compare"].add_argument("names", nargs="+", help="two or more search names")
    p["compare"].add_argument("--out", metavar="DIR", default="compare",
                              help="folder for the figure and tables (default: compare)")

    for name in ("search", "resume", "validate", "train", "sample"):
        _add_data_dir(p[name])
    for name in ("search", "resume", "train"):
        p[name].add_argument("-v", "--verbose", action="store_true",
                             help="also show Ray's, Optuna's and MLflow's own log lines")
    for name in ("search", "resume", "train", "sample", "pareto", "compare", "list", "status", "logs", "stop"):
        _add_tracking(p[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(getattr(args, "verbose", False))
    module, func, _ = COMMANDS[args.command]
    if args.command in ("search", "resume"):  # before the command's imports start threads (see the module)
        from hyperlab.search.sigterm import sigterm_ends_cleanly

        with sigterm_ends_cleanly():
            return _run(args, module, func)
    return _run(args, module, func)


def _run(args: argparse.Namespace, module: str, func: str) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return getattr(importlib.import_module(module), func)(args) or 0
    except UserError as err:
        print(f"hyperlab {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hyperlab {args.command}: interrupted", file=sys.stderr)
        return exit_now_if_ray(130)
    except Terminated:
        print(f"hyperlab {args.command}: terminated", file=sys.stderr)
        return exit_now_if_ray(143)
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_now_if_ray(code: int) -> int:
    """After an interruption, a driver whose Ray is up exits at once, its record already closed: the
    signal may have stopped its local Ray's processes too, and Ray's exit hook would wait a minute on them."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _quiet_libraries(verbose: bool = False) -> None:
    """Ray's, Optuna's, MLflow's and its database migrations' INFO lines and download bars are not for
    the user (``--verbose`` shows them; ``HYPERLAB_VERBOSE=1`` carries that into a Ray job's driver)."""
    import logging

    if verbose:
        os.environ["HYPERLAB_VERBOSE"] = "1"
    if os.environ.get("HYPERLAB_VERBOSE") == "1":
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ... at" per run
    for name in ("mlflow", "alembic", "optuna", "ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _raise_terminated(signum, frame):
    raise Terminated()
