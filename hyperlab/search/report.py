"""Keeps a search's parent run current as trials finish, from what the driver sees (the store is read
once, when a resumed search starts): the hypervolume after every completed trial, with the compute spent
by then (CPU- and GPU-hours of every trial ended, complete or not: ``search/cpu_hours``,
``search/gpu_hours``) and the wall time since the search started (``search/wall_hours``), each complete
trial's front and knee tags, and the front (CSV and Parquet), trade-off figure (PNG and HTML) and
hypervolume-against-compute figure at most every ``every_s`` seconds and as the last trial ends (or at the
end of an interrupted search).

The cost of a trial's end does not grow with the search: no re-read of the store, figures throttled,
and the front kept incrementally. A new complete trial is compared with the front's members only; when it
joins, it drops the members it dominates, and the knee and the hypervolume are worked out on the front
alone (points behind the front add no volume, and the knee is a property of the front), by the same
functions ``hyperlab pareto`` uses on the whole table."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hyperlab.metrics import COMPLETE, FIDELITIES
from hyperlab.tracking import layout
from hyperlab.tracking.writer import SearchWriter

log = logging.getLogger(__name__)
REPORT_EVERY_S = 60.0
CPU_SECONDS, GPU_SECONDS = "cost/cpu_seconds", "cost/gpu_seconds"  # of a trial's run (see callback.trial_cost)
SERIES = (layout.HYPERVOLUME_METRIC, "search/cpu_hours", "search/gpu_hours", "search/wall_hours")
HYPERVOLUME_PNG = "hypervolume.png"


def _finite(value) -> float:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else 0.0


class SearchReporter:
    def __init__(self, writer: SearchWriter, objectives: dict[str, str], bounds: dict[str, float] | None = None,
                 every_s: float = REPORT_EVERY_S):
        self.writer, self.objectives, self.bounds, self.every_s = writer, objectives, bounds, every_s
        self._rows: dict[int, dict] = {}  # Optuna number -> row of the search's table
        self._reference: list[float] | None = None
        self._logged_complete = -1
        self._last_files = time.monotonic()  # the first files a minute in (or at the end), not at the first trial
        self._dirty = False
        self._front_tags: dict[int, dict[str, str]] = {}  # Optuna number -> front tags its run has
        self._front: dict[int, np.ndarray] = {}  # Optuna number -> objectives (as minimised) of a front member
        self._knee: int | None = None
        self._volume = 0.0
        self._complete: set[int] = set()  # numbers of the complete trials with every objective
        self._ended: set[int] = set()     # numbers of the trials ended
        self._spent = {CPU_SECONDS: 0.0, GPU_SECONDS: 0.0}  # summed over the trials ended
        self._started = time.time()  # the search's start (the parent run's, once a resumed search loads)
        self._series: list[dict[str, float]] = []  # per complete trial: the hypervolume, compute and wall time

    def load(self) -> None:
        """The trials a resumed search already finished, from the store (once)."""
        from hyperlab.tracking import load_search

        df = load_search(self.writer.name, self.writer.client.tracking_uri)
        if len(df) and "optuna_trial" in df:
            for row in df.to_dict("records"):
                if pd.notna(row.get("optuna_trial")):
                    self._rows[int(row["optuna_trial"])] = row
                    if row.get("fidelity") in FIDELITIES:
                        self._ended.add(int(row["optuna_trial"]))
        tag = self.writer.search_tag(layout.TAG_REFERENCE)
        self._reference = json.loads(tag) if tag else None
        for row in self._rows.values():
            for key in self._spent:
                self._spent[key] += _finite(row.get(key))
        self._started, self._series = self.writer.search_series(SERIES)
        self._rebuild_front()

    def trial_ended(self, number: int, params: dict, metrics: dict, fidelity: str) -> None:
        """Record a trial's end; a complete one updates the front's tags and the hypervolume."""
        before = self._rows.get(number, {})
        for key in self._spent:  # a trial that ends again (resumed) counts once
            self._spent[key] += _finite(metrics.get(key)) - _finite(before.get(key))
        self._rows[number] = {"run_id": self.writer.run_id(number), "fidelity": fidelity, "optuna_trial": number,
                              **params, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self._dirty = True
        self._ended.add(number)
        if fidelity == COMPLETE:
            self._add_to_front(number)

    @property
    def ended(self) -> int:
        """Trials of the search that have ended (complete, stopped early or failed)."""
        return len(self._ended)

    def publish(self, force: bool = False) -> None:
        """Write the front and the figures to the parent run, if due (or ``force``)."""
        if not self._dirty or (not force and time.monotonic() - self._last_files < self.every_s):
            return
        from hyperlab.analysis import write_search_report

        df = self.table()
        if not (df["fidelity"] == COMPLETE).any():
            return
        try:
            with tempfile.TemporaryDirectory(prefix="hyperlab-report-") as tmp:
                write_search_report(df, self.objectives, Path(tmp), reference=self._reference_point(df))
                if self._series:
                    from hyperlab.analysis.figures import hypervolume_figure

                    hypervolume_figure(pd.DataFrame(self._series), Path(tmp) / HYPERVOLUME_PNG)
                self.writer.log_search_artifacts(Path(tmp), layout.REPORT_DIR)
        except Exception:  # a figure that fails to draw must not end the search; the runs are safe
            log.exception("could not update the search's front and figures")
        self._last_files, self._dirty = time.monotonic(), False

    def table(self) -> pd.DataFrame:
        columns = ["run_id", "fidelity", "optuna_trial", *self.objectives]
        df = pd.DataFrame(list(self._rows.values()))
        for column in columns:
            if column not in df:
                df[column] = float("nan") if column in self.objectives else None
        return df

    # ---- the front, kept as trials end --------------------------------------------------------------
    def _point(self, number: int) -> np.ndarray | None:
        """The trial's objectives as minimised (``max`` ones negated), None unless all are finite."""
        row = self._rows[number]
        point = np.array([float(row.get(name, np.nan)) * (1.0 if d == "min" else -1.0)
                          for name, d in self.objectives.items()])
        return point if np.isfinite(point).all() else None

    def _add_to_front(self, number: int) -> None:
        point = self._point(number)
        if point is None:
            return
        self._complete.add(number)
        self._front.pop(number, None)  # a resumed trial reporting its end again
        members = np.array(list(self._front.values())).reshape(-1, len(self.objectives))
        numbers = list(self._front)
        behind = ((members <= point).all(axis=1) & (members != point).any(axis=1)).any()
        changed = {number}
        if not behind:
            ahead = (point <= members).all(axis=1) & (point != members).any(axis=1)
            for dropped in np.asarray(numbers)[ahead].tolist():
                del self._front[dropped]
                changed.add(dropped)
            self._front[number] = point
            changed |= {self._knee} - {None}
            self._update_knee_and_volume()
            changed |= {self._knee} - {None}
        self._log_hypervolume()
        self._send_tags(changed)

    def _rebuild_front(self) -> None:
        """The front, knee and tags of the trials a resumed search already finished (once, at load)."""
        from hyperlab.analysis.pareto import minimisation_matrix, pareto_front

        df = self.table()
        ranks = pareto_front(df, self.objectives)
        points = minimisation_matrix(df, self.objectives)
        for index, rank in ranks.dropna().items():
            number = int(df.at[index, "optuna_trial"])
            self._complete.add(number)
            if rank == 1:
                self._front[number] = points[df.index.get_loc(index)]
        self._logged_complete = len(self._complete)
        if self._front:
            self._update_knee_and_volume()
        self._send_tags(self._complete)  # a driver that stopped may not have sent them all

    def _front_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self._rows[n] for n in self._front])

    def _update_knee_and_volume(self) -> None:
        from hyperlab.analysis import search_hypervolume
        from hyperlab.analysis.report import front_table

        df = self._front_frame()
        front = front_table(df, self.objectives)  # as `hyperlab pareto` finds the knee (ties alike)
        knees = front.loc[front["knee"], "optuna_trial"]
        self._knee = int(knees.iloc[0]) if len(knees) else None
        self._volume = search_hypervolume(df, self.objectives, self._reference_point())

    def _send_tags(self, numbers) -> None:
        """Tag complete trials' runs with whether they are on the front (``hyperlab.front``: 1 or 0) and
        the knee (``hyperlab.knee``: 1 or 0), as ``hyperlab pareto`` computes them; only changed tags go
        (a trial's end changes a few, not every run's, as a full non-dominated rank would)."""
        for number in numbers:
            tags = {layout.TAG_FRONT: str(int(number in self._front)), layout.TAG_KNEE: str(int(number == self._knee))}
            if self._front_tags.get(number) != tags and self.writer.run_id(number) is not None:
                self.writer.set_tags(number, tags)
                self._front_tags[number] = tags

    def _log_hypervolume(self) -> None:
        complete = len(self._complete)
        if complete == self._logged_complete:
            return
        point = {layout.HYPERVOLUME_METRIC: self._volume, "search/cpu_hours": self._spent[CPU_SECONDS] / 3600,
                 "search/gpu_hours": self._spent[GPU_SECONDS] / 3600,
                 "search/wall_hours": (time.time() - self._started) / 3600}
        for key, value in point.items():
            self.writer.log_search_metric(key, value, step=complete)
        self._series.append(point)
        self._logged_complete = complete

    def _reference_point(self, df: pd.DataFrame | None = None) -> list[float]:
        """Fixed at the first complete trial (then kept in a tag, for a resumed search)."""
        if self._reference is None:
            from hyperlab.analysis import search_reference

            self._reference = search_reference(self.objectives, self.table() if df is None else df, bounds=self.bounds)
            self.writer.set_search_tag(layout.TAG_REFERENCE, json.dumps(self._reference))
        return self._reference
