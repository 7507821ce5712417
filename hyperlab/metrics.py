"""The one source of truth for metric names and their directions.

The searcher (Optuna objectives), the Pareto analysis and every logged key read this table.
A metric name is ``<split>/<quantity>``; MLflow, Ray Tune and Optuna all accept the slash.
"""

from __future__ import annotations

from typing import Literal

Direction = Literal["min", "max"]

METRICS: dict[str, Direction] = {
    "model/n_params": "min",           # trainable parameters of the whole model
    "model/compression_ratio": "min",  # generated layers: with hypernetwork / without
    "train/loss": "min",               # mean cross-entropy (nats) over the last evaluation window
    "val/bpc": "min",                  # validation bits per character
    "test/bpc": "min",
    "val/loss": "min",
    "val/acc": "max",                  # validation accuracy in [0, 1]
    "test/acc": "max",
    "test/loss": "min",
    "throughput": "max",               # tokens (char models) or images per second
    "time/elapsed": "min",             # seconds since the run started
}

OBJECTIVE_METRICS = (
    "model/n_params", "model/compression_ratio",
    "val/bpc", "test/bpc", "val/loss", "val/acc", "test/acc", "test/loss",
)
"""Metrics a search may optimise."""


TASK_METRICS: dict[str, tuple[str, ...]] = {
    "charlm": ("model/n_params", "model/compression_ratio", "val/bpc", "test/bpc"),
    "classify": ("model/n_params", "model/compression_ratio", "val/acc", "val/loss", "test/acc", "test/loss"),
}
"""Objectives each task's training reports (``test/*`` only with ``schedule.test``;
``model/compression_ratio`` only for models with a static hypernetwork)."""


def direction(name: str) -> Direction:
    """The direction ('min' or 'max') of a known metric; KeyError names the unknown one."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None
