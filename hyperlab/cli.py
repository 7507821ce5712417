"""The ``hyperlab`` command line. Each command lives in its layer's ``commands`` module,
imported only when that command runs (``hyperlab pareto`` never loads torch or Ray)."""

from __future__ import annotations

import argparse
import importlib
import sys

from hyperlab.errors import UserError

# command -> (module, function, help)
COMMANDS = {
    "search": ("hyperlab.search.commands", "search", "run a search described by a search-space YAML file"),
    "resume": ("hyperlab.search.commands", "resume", "resume an interrupted search by name"),
    "validate": ("hyperlab.search.commands", "validate", "check a search-space or pipeline YAML file"),
    "train": ("hyperlab.training.commands", "train", "train one model from a pipeline YAML file"),
    "sample": ("hyperlab.training.commands", "sample", "sample text (and the activity figure) from a run"),
    "pareto": ("hyperlab.analysis.commands", "pareto", "print (or save) a search's Pareto front"),
    "compare": ("hyperlab.analysis.commands", "compare", "compare the fronts of several searches"),
    "list": ("hyperlab.analysis.commands", "list_searches", "list the searches in an MLflow store"),
}


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite:///hyperlab-runs/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperlab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = {name: sub.add_parser(name, help=help_) for name, (_, _, help_) in COMMANDS.items()}

    p["search"].add_argument("file", help="search-space YAML file")
    p["search"].add_argument("--name", help="search name (default: the file's stem plus a timestamp)")
    p["search"].add_argument("--address", help="Ray cluster to join: 'auto' or 'ray://host:10001' "
                             "(default: start a local Ray)")
    p["search"].add_argument("--storage", help="Ray results directory or URI (default: hyperlab-runs/ray)")
    p["search"].add_argument("--data-dir", help="dataset cache directory (default: $HYPERLAB_DATA_DIR)")
    p["search"].add_argument("--smoke-test", action="store_true",
                             help="shrink the search to seconds (2 trials, a few steps)")
    p["search"].add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p["resume"].add_argument("name", help="name of the search to resume")
    p["resume"].add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p["resume"].add_argument("--address")
    p["resume"].add_argument("--storage")
    p["resume"].add_argument("--data-dir")
    p["validate"].add_argument("files", nargs="+", help="search-space or pipeline YAML files")

    p["train"].add_argument("file", help="pipeline (training config) YAML file")
    p["train"].add_argument("--data-dir")
    p["train"].add_argument("--out", help="directory for checkpoints (default: hyperlab-runs/train/<run>)")
    p["sample"].add_argument("run_id", help="MLflow run id of a trained char model")
    p["sample"].add_argument("--length", type=int, default=500)
    p["sample"].add_argument("--temperature", type=float, default=1.0)
    p["sample"].add_argument("--primer", default="")
    p["sample"].add_argument("--seed", type=int, default=0)
    p["sample"].add_argument("--out", default=".", help="directory for the text and the figure")
    p["sample"].add_argument("--data-dir")

    p["pareto"].add_argument("name", help="search name")
    p["pareto"].add_argument("--out", help="write the front to FILE.parquet or FILE.csv")
    p["compare"].add_argument("names", nargs="+", help="two or more search names")
    p["compare"].add_argument("--out", default="compare", help="directory for the figure and tables")

    for name in ("search", "resume", "train", "sample", "pareto", "compare", "list"):
        _add_tracking(p[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func, _ = COMMANDS[args.command]
    try:
        return getattr(importlib.import_module(module), func)(args) or 0
    except UserError as err:
        print(f"hyperlab {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
