"""``hyperlab pareto``, ``hyperlab compare`` and ``hyperlab list``: searches read from MLflow, analysed
by ``hyperlab.analysis``, printed as tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from hyperlab.analysis.compare import compare_searches, shared_objectives
from hyperlab.analysis.figures import overlay_figure
from hyperlab.analysis.paper import closest_paper_result, dataset_of, paper_table
from hyperlab.analysis.report import front_table, write_front
from hyperlab.cli.files import check_out_file, check_out_folder
from hyperlab.errors import UserError
from hyperlab.metrics import FIDELITIES, LOG_SCALE, RUNNING
from hyperlab.tracking import layout, read
from hyperlab.tracking.searches import load_search, load_search_meta, objectives_of
from hyperlab.tracking.store import resolve_tracking_uri

SPACE_HASH_TAG = layout.TAG_SPACE_HASH
_META_COLUMNS = {"run_id", "status", "fidelity", "start_time", "end_time", "ray_trial_id", "checkpoint", "outcome",
                 "optuna_trial"}


def pareto(args: argparse.Namespace) -> int:
    """Print a search's front (rank-1 complete trials, knee marked, paper's closest result) and
    optionally write it to ``--out`` (.parquet or .csv)."""
    uri = resolve_tracking_uri(args.tracking_uri)
    if args.out:
        check_out_file(Path(args.out), "--out", (".parquet", ".csv"))
    df, front, objectives = _search_front(args.name, uri)
    if args.out:
        write_front(front, args.out)
    _print_front(args.name, front, objectives, df)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def print_search(name: str, tracking_uri: str) -> int:
    """Print a finished search's front; returns how many of its trials are complete."""
    df, front, objectives = _search_front(name, tracking_uri)
    if front.empty:
        print(f"search {name}: no complete trial with every objective {list(objectives)}")
    else:
        _print_front(name, front, objectives, df)
    return int((df["fidelity"] == "complete").sum()) if len(df) else 0


def _search_front(name: str, uri: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    meta = load_search_meta(name, uri)
    objectives = objectives_of(meta)
    df = load_search(name, uri)
    if df.empty:
        return df, pd.DataFrame(columns=["knee", "run_id", *objectives]), objectives
    front = with_paper_results(front_table(df, objectives), objectives, dataset_of(df, meta.tags))
    return df, front, objectives


def with_paper_results(front: pd.DataFrame, objectives: dict[str, str], dataset: str | None) -> pd.DataFrame:
    """Add ``paper_model``/``paper_params``/``paper_value`` columns: the closest paper result per point."""
    table = paper_table(dataset)
    metric = next((name for name in objectives if name != "model/n_params"), None)
    if table is None or metric is None or "model/n_params" not in objectives:
        return front
    closest = [closest_paper_result(row, table, metric) for _, row in front.iterrows()]
    front = front.copy()
    for key in ("model", "params", "value"):
        front[f"paper_{key}"] = [c[key] if c else None for c in closest]
    return front


def _print_front(name: str, front: pd.DataFrame, objectives: dict[str, str], df: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = df["fidelity"].value_counts()
    table = Table(title=f"Pareto front of {name}: {len(front)} of {counts.get('complete', 0)} complete trials")
    params = [c for c in front.columns if c not in _META_COLUMNS and c not in objectives
              and "/" not in c and c != "knee" and not c.startswith("paper_")]
    fixed = [c for c in params if c in df and df[c].nunique(dropna=False) == 1 and c != "throughput"]
    params = [c for c in params if c not in fixed]  # constant params go to the caption
    caption = [f"trials: {counts.get('complete', 0)} complete, {counts.get('partial', 0)} stopped early or "
               f"interrupted, {counts.get('failed', 0)} failed (only complete trials can be on the front)"]
    if fixed:
        caption.append("same in every trial: " + ", ".join(f"{c} = {_fmt(df[c].iloc[0])}" for c in fixed))
    caption.append("knee *: the best trade-off (farthest from the line joining the front's ends)")
    table.caption = "\n".join(caption)
    paper = [c for c in ("paper_model", "paper_params", "paper_value") if c in front.columns]
    unit = _throughput_unit(df)
    for column in ["knee", "trial", "run_id", *objectives, *params, *paper]:
        header = {"throughput": f"throughput ({unit})", "model/n_params": "model/n_params (count)"}.get(column, column)
        table.add_column(header, justify="left" if column in ("run_id", "paper_model") else "right",
                         overflow="fold", min_width=12 if column == "run_id" else None)
    for _, row in front.iterrows():
        trial = row.get("optuna_trial")
        cells = ["*" if row["knee"] else "", _fmt(trial), str(row["run_id"])[:12]]
        cells += [_fmt(row[c]) for c in [*objectives, *params, *paper]]
        table.add_row(*cells)
    Console(width=max(120, 14 * (len(params) + len(objectives) + 5))).print(table)


def _throughput_unit(df: pd.DataFrame) -> str:
    """What a trial's ``throughput`` counts per second: characters for a char model, images otherwise."""
    return "chars/s" if any(str(c).startswith(("val/bpc", "test/bpc")) for c in df.columns) else "images/s"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    return str(value)


def compare(args: argparse.Namespace) -> int:
    """Overlay the fronts, print hypervolumes against one reference, cross-domination and spread."""
    if len(args.names) < 2:
        raise UserError(f"compare needs two or more search names, got {args.names}")
    twice = sorted({name for name in args.names if args.names.count(name) > 1})
    if twice:
        raise UserError(f"compare: {', '.join(repr(n) for n in twice)} named more than once; "
                        "compare distinct searches")
    out = check_out_folder(Path(args.out), "--out")
    uri = resolve_tracking_uri(args.tracking_uri)
    metas = {name: load_search_meta(name, uri) for name in args.names}
    objectives = shared_objectives({name: objectives_of(meta) for name, meta in metas.items()})
    searches = {name: load_search(name, uri) for name in args.names}
    result = compare_searches(searches, objectives, references={name: recorded_reference(meta)
                                                                for name, meta in metas.items()})
    out.mkdir(exist_ok=True)
    if len(objectives) >= 2:
        overlay_figure(searches, objectives, out / "fronts.png", out / "fronts.html", title=" vs ".join(args.names))
    result["domination"].to_csv(out / "domination.csv", index=False)
    _print_comparison(result, objectives, metas)
    print(f"wrote {out / 'fronts.png'}, {out / 'fronts.html'}, {out / 'domination.csv'}")
    return 0


def recorded_reference(meta) -> dict[str, float] | None:
    """The hypervolume reference a search's parent run records (objective -> value), if it has one."""
    text = meta.tags.get(layout.TAG_REFERENCE)
    if not text:
        return None
    try:
        return dict(zip(objectives_of(meta), (float(v) for v in json.loads(text))))
    except (ValueError, TypeError):
        return None


def _print_comparison(result: dict, objectives: dict[str, str], metas: dict) -> None:
    reference = ", ".join(f"{name}={value:.6g}" for name, value in zip(objectives, result["reference"]))
    why = {"the searches' own": "each search's own, as on its MLflow parent run",
           "the worst of the searches' own": "the worst of the searches' own, per objective",
           "the trials": "the worst trial plus 10% of the range, per objective"}[result["reference_from"]]
    print(f"common reference point ({why}): {reference}")
    if any(name in LOG_SCALE for name in objectives):
        print(f"  (hypervolumes measure {', '.join(n for n in objectives if n in LOG_SCALE)} in decades: log10)")
    domination = result["domination"]
    for name, volume in result["hypervolume"].items():
        rows = domination[domination["search"] == name]
        beaten = rows[rows["n_dominating"] > 0]
        print(f"  {name}: hypervolume {volume:.6g}; {len(beaten)} of {len(rows)} front points dominated by others")
        for _, row in beaten.iterrows():
            point = ", ".join(f"{o}={row[o]:.6g}" for o in objectives)
            print(f"      {row.get('run_id', '')}  {point}  dominated by {row['dominated_by']}")
    equal = result["at_equal_compute"]
    if equal is not None:
        print(f"at equal compute ({equal['hours']:.4g} {equal['kind'].upper()}-hours, what the cheapest search spent; "
              f"trials in the order they ended):")
        for rank, (name, volume) in enumerate(equal["hypervolume"].items(), 1):
            print(f"  {rank}. {name}: hypervolume {volume:.6g}")
    groups: dict[str, list[str]] = {}
    for name, meta in metas.items():
        groups.setdefault(meta.tags.get(SPACE_HASH_TAG, "same objectives"), []).append(name)
    for key, names in groups.items():
        values = np.array([result["hypervolume"][n] for n in names])
        if len(values) > 1:
            print(f"spread over {len(names)} searches ({key}): hypervolume "
                  f"{values.mean():.6g} ± {values.std(ddof=1):.3g} (mean ± std)")


def list_searches(args: argparse.Namespace) -> int:
    """Print every search in the store: trial counts by fidelity, wall time, best value per objective."""
    from rich.console import Console
    from rich.table import Table

    uri = resolve_tracking_uri(args.tracking_uri)
    names = read.list_searches(uri)
    table = Table(title=f"searches in {uri}")
    for column in ("search", "status", *FIDELITIES, RUNNING, "wall time", "best per objective"):
        table.add_column(column)
    for name in names:
        table.add_row(*search_summary(name, uri))
    Console(width=160).print(table)
    if not names:
        print("no searches yet")
    return 0


def search_summary(name: str, uri: str) -> list[str]:
    """[name, status, n complete, partial, failed, running, wall time, best values] of one search."""
    meta = load_search_meta(name, uri)
    df = load_search(name, uri)
    counts = df["fidelity"].value_counts() if not df.empty else pd.Series(dtype=int)
    complete = df[df["fidelity"] == "complete"] if not df.empty else df
    best = []
    for objective, direction in meta.objectives.items():
        values = complete[objective].dropna() if objective in complete else pd.Series(dtype=float)
        if len(values):
            best.append(f"{objective} {'min' if direction == 'min' else 'max'} "
                        f"{(values.min() if direction == 'min' else values.max()):.6g}")
    return [name, meta.status, *(str(counts.get(f, 0)) for f in (*FIDELITIES, RUNNING)),
            _duration(meta.wall_time_s), "; ".join(best) or "-"]


def _duration(seconds: float) -> str:
    if np.isnan(seconds):
        return "-"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
