"""The training core: ``fit(config, report)`` trains one model and knows neither Ray nor MLflow.

Public names (imported lazily, so ``from hyperlab.training import TrainConfig`` does not load torch):
``TrainConfig``, ``fit``, ``parameter_count``, ``load_model``, ``smoke_overrides``, ``sample``,
``activity_figure``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TrainConfig", "fit", "parameter_count", "load_model", "smoke_overrides", "sample", "activity_figure"]

_WHERE = {
    "TrainConfig": "hyperlab.training.config",
    "fit": "hyperlab.training.loop",
    "parameter_count": "hyperlab.training.loop",
    "load_model": "hyperlab.training.loop",
    "smoke_overrides": "hyperlab.training.config",
    "sample": "hyperlab.training.generate",
    "activity_figure": "hyperlab.training.generate",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hyperlab.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
