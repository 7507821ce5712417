"""The HyperNetworks paper's results (Ha, Dai, Le 2016, section 3 of PAPER.md) as data.

Each table is keyed by dataset and lists (model, params, metric, value) with the metric named as
in :mod:`hyperlab.metrics`. Test errors are stored as accuracies (1 - error) so that a front of
``test/acc`` can be compared directly. MNIST's counts are those of the generated layer (conv2),
the only ones the paper prints; its comparable metric is the compression ratio.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd


class PaperResult(NamedTuple):
    """One row of a paper table."""

    model: str
    params: float
    metric: str
    value: float


def _char(rows: list[tuple[str, float, float, float]]) -> list[PaperResult]:
    # (model, test bpc, valid bpc, params) -> one result per metric
    out = []
    for model, test, valid, params in rows:
        out.append(PaperResult(model, params, "test/bpc", test))
        if not math.isnan(valid):
            out.append(PaperResult(model, params, "val/bpc", valid))
    return out


_NAN = float("nan")

PAPER_TABLES: dict[str, list[PaperResult]] = {
    "ptb": _char([
        ("LSTM 1000", 1.312, 1.347, 4.25e6),
        ("LSTM 1250", 1.306, 1.340, 6.57e6),
        ("2-layer LSTM 1000", 1.281, 1.312, 12.26e6),
        ("LN-LSTM 1000", 1.267, 1.300, 4.26e6),
        ("HyperLSTM 1000", 1.265, 1.296, 4.91e6),
        ("LN HyperLSTM 1000", 1.250, 1.281, 4.92e6),
        ("LN HyperLSTM 1000, Nz=16", 1.233, 1.263, 5.06e6),
        ("2-layer LN HyperLSTM 1000, Nz=16", 1.219, 1.245, 14.41e6),
    ]),
    "enwik8": _char([
        ("LSTM 1800", 1.470, _NAN, 14.81e6),
        ("LN-LSTM 1800", 1.402, _NAN, 14.82e6),
        ("HyperLSTM 1800", 1.391, _NAN, 18.71e6),
        ("LN HyperLSTM 1800", 1.353, _NAN, 18.78e6),
        ("LN HyperLSTM 2048, Nh_hyper=512", 1.340, _NAN, 26.54e6),
    ]),
    "cifar10": [
        PaperResult("WRN-40-1", 0.563e6, "test/acc", 1 - 0.0673),
        PaperResult("Hyper WRN-40-1", 0.097e6, "test/acc", 1 - 0.0802),
        PaperResult("WRN-40-2", 2.236e6, "test/acc", 1 - 0.0566),
        PaperResult("Hyper WRN-40-2", 0.148e6, "test/acc", 1 - 0.0723),
    ],
    # The paper prints conv2's counts (12,544 ordinary, 4,244 generated); these are the whole
    # network's, from its stated architecture (conv1 7x7x1x16, conv2 7x7x16x16, fc 784->10, biases),
    # so that they compare with a trial's model/n_params.
    "mnist": [
        PaperResult("convnet, ordinary conv2", 21_210, "test/acc", 1 - 0.0072),
        PaperResult("convnet, generated conv2 Nz=4", 12_910, "test/acc", 1 - 0.0076),
        PaperResult("convnet, ordinary conv2", 21_210, "model/compression_ratio", 1.0),
        PaperResult("convnet, generated conv2 Nz=4", 12_910, "model/compression_ratio", 4_244 / 12_544),
    ],
}
"""Paper results by dataset name (the names :mod:`hyperlab.data` uses)."""

_ALIASES = {"char-ptb": "ptb", "ptb-char": "ptb", "penn-treebank": "ptb", "cifar-10": "cifar10"}
DATASET_KEYS = ("data.dataset", "data.name", "dataset", "task")
"""Param (or parent-tag) keys, in order, that may name a search's dataset."""


def paper_table(dataset: str | None) -> pd.DataFrame | None:
    """The paper's results for ``dataset`` as a table (model, params, metric, value), else None."""
    if not dataset:
        return None
    key = str(dataset).lower()
    key = _ALIASES.get(key, key)
    rows = PAPER_TABLES.get(key)
    return pd.DataFrame(rows, columns=PaperResult._fields) if rows else None


def dataset_of(df: pd.DataFrame, tags: dict[str, str] | None = None) -> str | None:
    """The dataset a search ran on: the first of :data:`DATASET_KEYS` found in a parent tag
    (``hyperlab.<key>`` or the key itself) or as a param column with a single value."""
    tags = tags or {}
    for key in DATASET_KEYS:
        for tag in (f"hyperlab.{key}", key):
            if tags.get(tag):
                return tags[tag]
        if key in df.columns and df[key].nunique() == 1:
            return str(df[key].dropna().iloc[0])
    return None


def closest_paper_result(row: pd.Series, table: pd.DataFrame, metric: str | None = None) -> dict | None:
    """The paper result closest to a front point ``row`` on (log10 params, ``metric``).

    ``metric`` defaults to the first of the row's metrics that the table (or its other split) has.

    Distances use log10 parameters and the metric scaled by its spread in the paper table (so a
    decade of parameters and the table's whole range of the metric weigh alike). Falls back to
    the other split's metric (``val/`` <-> ``test/``) when the table lacks ``metric``; returns None
    when neither exists. The result: model, params, metric, value, distance.
    """
    if metric is None:
        metric = next((m for m in row.index if m != "model/n_params" and _rows_for(table, m) is not None), None)
        if metric is None:
            return None
    rows = _rows_for(table, metric)
    if rows is None or "model/n_params" not in row or metric not in row:
        return None
    if not np.isfinite([float(row["model/n_params"]), float(row[metric])]).all():
        return None
    spread = rows["value"].max() - rows["value"].min() or 1.0
    d_params = np.log10(rows["params"].to_numpy()) - np.log10(float(row["model/n_params"]))
    d_metric = (rows["value"].to_numpy() - float(row[metric])) / spread
    distance = np.hypot(d_params, d_metric)
    best = int(np.argmin(distance))
    return {**rows.iloc[best].to_dict(), "distance": float(distance[best])}


def _rows_for(table: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    # the table's rows for ``metric``, else for the same quantity on the other split, else None
    rows = table[table["metric"] == metric]
    if rows.empty:
        split, _, quantity = str(metric).partition("/")
        other = {"val": "test", "test": "val"}.get(split)
        rows = table[table["metric"] == f"{other}/{quantity}"] if other else rows
    return None if rows.empty else rows
