"""Pareto fronts, hypervolume and comparison of searches, computed on tables (pandas and numpy).

It reads no store and loads neither torch, Ray nor MLflow: a search's table comes from
``hyperlab.tracking.load_search`` (or any frame with the objectives as columns). matplotlib and
plotly are imported only inside the functions that draw.
"""

from hyperlab.analysis.compare import compare_searches, cross_domination, dominated_mask
from hyperlab.analysis.figures import overlay_figure, tradeoff_figure
from hyperlab.analysis.hypervolume import common_reference, hypervolume, search_hypervolume, search_reference
from hyperlab.analysis.paper import PAPER_TABLES, closest_paper_result, dataset_of, paper_table
from hyperlab.analysis.pareto import front_of, knee, non_dominated_ranks, pareto_front
from hyperlab.analysis.report import front_table, write_front, write_search_report

__all__ = [
    "PAPER_TABLES", "closest_paper_result", "common_reference", "compare_searches", "cross_domination",
    "dataset_of", "dominated_mask", "front_of", "front_table", "hypervolume", "knee",
    "non_dominated_ranks", "overlay_figure", "paper_table", "pareto_front", "search_hypervolume",
    "search_reference", "tradeoff_figure", "write_front", "write_search_report",
]
