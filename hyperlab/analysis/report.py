"""A search's analysis files: front table (CSV + Parquet), trade-off figure (PNG + HTML), hypervolume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hyperlab.analysis.figures import tradeoff_figure
from hyperlab.analysis.hypervolume import search_hypervolume, search_reference
from hyperlab.analysis.pareto import front_of, knee

FRONT_CSV, FRONT_PARQUET = "front.csv", "front.parquet"
TRADEOFF_PNG, TRADEOFF_HTML = "tradeoff.png", "tradeoff.html"
REPORT_FILES = (FRONT_CSV, FRONT_PARQUET, TRADEOFF_PNG, TRADEOFF_HTML)


def front_table(df: pd.DataFrame, objectives: dict[str, str], ranks: pd.Series | None = None) -> pd.DataFrame:
    """The front (rank-1 complete trials) sorted by the first objective, with a boolean ``knee``
    column when there are two objectives (``ranks``: ``df``'s :func:`pareto_front`, if known)."""
    front = front_of(df, objectives, ranks)
    front.insert(0, "knee", False)
    if len(objectives) == 2 and not front.empty:
        front.loc[knee(front, objectives), "knee"] = True
    return front.reset_index(drop=True)


def write_front(front: pd.DataFrame, path) -> Path:
    """Write a front table as Parquet or CSV, chosen by the extension."""
    from hyperlab.errors import UserError

    path = Path(path)
    if path.suffix == ".parquet":
        front.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        front.to_csv(path, index=False)
    else:
        raise UserError(f"{path}: expected a .parquet or .csv file name, got {path.suffix or 'no'} extension")
    return path


def write_search_report(df: pd.DataFrame, objectives: dict[str, str], out_dir,
                        reference: Sequence[float] | None = None, title: str = "",
                        paper: pd.DataFrame | None = None) -> dict:
    """Write front.csv, front.parquet, tradeoff.png and tradeoff.html into ``out_dir``.

    Returns {"hypervolume": float, "front": DataFrame, "reference": list}. Without ``reference``
    it is :func:`search_reference` of ``df``; a caller logging a hypervolume series computes it once
    and passes it on every call. With fewer than two objectives no figure is drawn.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    front = front_table(df, objectives)
    write_front(front, out_dir / FRONT_CSV)
    write_front(front, out_dir / FRONT_PARQUET)
    if len(objectives) >= 2:
        tradeoff_figure(df, objectives, out_dir / TRADEOFF_PNG, out_dir / TRADEOFF_HTML, title=title, paper=paper)
    if front.empty:
        return {"hypervolume": 0.0, "front": front, "reference": list(reference or [])}
    reference = list(reference) if reference is not None else search_reference(objectives, df)
    return {"hypervolume": search_hypervolume(df, objectives, reference), "front": front, "reference": reference}
