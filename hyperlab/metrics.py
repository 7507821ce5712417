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
    "val/nll": "min",                  # handwriting: nats per validation line (the paper's log-loss)
    "val/nll_per_point": "min",        # handwriting: nats per predicted pen point
    "val/acc": "max",                  # validation accuracy in [0, 1]
    "test/acc": "max",
    "test/loss": "min",
    "throughput": "max",               # tokens (char models), images or pen points per second
    "time/elapsed": "min",             # seconds since the run started
}

OBJECTIVE_METRICS = (
    "model/n_params", "model/compression_ratio",
    "val/bpc", "test/bpc", "val/loss", "val/acc", "test/acc", "test/loss", "val/nll", "val/nll_per_point",
)
"""Metrics a search may optimise."""


TASK_METRICS: dict[str, tuple[str, ...]] = {
    "charlm": ("model/n_params", "model/compression_ratio", "val/bpc", "test/bpc"),
    "classify": ("model/n_params", "model/compression_ratio", "val/acc", "val/loss", "test/acc", "test/loss"),
    "handwriting": ("model/n_params", "val/nll", "val/nll_per_point"),
}
"""Objectives each task's training reports (``test/*`` only with ``schedule.test``;
``model/compression_ratio`` only for models with a static hypernetwork)."""


LOG_SCALE = frozenset({"model/n_params"})
"""Metrics read on a log scale (parameter counts span orders of magnitude): figures, knees and
hypervolumes measure them in decades."""

NATURAL_WORST: dict[str, float] = {"val/acc": 0.0, "test/acc": 0.0}
"""Worst possible values of bounded metrics: a search's reference point can be fixed before any trial."""

# What became of a trial: trained to the end, stopped early (or interrupted and never resumed),
# failed after its retries, or still running. Fronts are computed from complete trials only.
COMPLETE, PARTIAL, FAILED, RUNNING = "complete", "partial", "failed", "running"
FIDELITIES = (COMPLETE, PARTIAL, FAILED)


def direction(name: str) -> Direction:
    """The direction ('min' or 'max') of a known metric; KeyError names the unknown one."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None
