"""Keeps a search's parent run current as trials finish: the front (CSV and parquet), the tradeoff
figure (PNG and HTML) and the hypervolume as a metric series over completed trials."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from hyperlab.tracking import layout
from hyperlab.tracking.writer import SearchWriter

log = logging.getLogger(__name__)


class SearchReporter:
    def __init__(self, writer: SearchWriter, objectives: dict[str, str], bounds: dict[str, float] | None = None):
        self.writer = writer
        self.objectives = objectives
        self.bounds = bounds  # known worst values (the parameter budget) for the reference point
        self._logged_complete = -1

    def update(self) -> None:
        """Recompute the front from MLflow (the store is the truth, also after a resume) and log it."""
        from hyperlab.analysis import load_search, search_reference, write_search_report

        df = load_search(self.writer.name, self.writer.client.tracking_uri)
        complete = int((df["fidelity"] == layout.COMPLETE).sum()) if len(df) else 0
        if complete == 0 or complete == self._logged_complete:
            return
        reference = self._reference()
        if reference is None:
            reference = search_reference(self.objectives, df, bounds=self.bounds)
            self.writer.set_search_tag(layout.TAG_REFERENCE, json.dumps(reference))
        with tempfile.TemporaryDirectory(prefix="hyperlab-report-") as tmp:
            result = write_search_report(df, self.objectives, Path(tmp), reference=reference)
            self.writer.log_search_artifacts(Path(tmp), "pareto")
        self.writer.log_search_metric(layout.HYPERVOLUME_METRIC, result["hypervolume"], step=complete)
        self._logged_complete = complete

    def _reference(self) -> list[float] | None:
        tag = self.writer.search_tag(layout.TAG_REFERENCE)
        return json.loads(tag) if tag else None
