"""The training configuration: one typed, validated, frozen config per run.

A pipeline YAML file becomes a ``TrainConfig`` at the edge (``config_io.load_yaml``); the search
orchestration derives trial configs from it with ``with_overrides`` (dotted keys) and logs
``flat()`` as MLflow params.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from hyperlab.config_io import StrictModel, validate
from hyperlab.errors import ConfigError
from hyperlab.models.registry import MODELS, AnyModelConfig

CHAR_DATASETS = ("ptb", "enwik8", "text8", "tinyshakespeare", "bundled")
IMAGE_DATASETS = ("mnist", "cifar10", "cifar10_folder")
STROKE_DATASETS = ("iam_ondb",)
DATASETS = {"charlm": CHAR_DATASETS, "classify": IMAGE_DATASETS, "handwriting": STROKE_DATASETS}


class DataSection(StrictModel):
    """Which data and how it is batched."""

    dataset: str = pydantic.Field(min_length=1, max_length=4096)  # a known name (above) or a path
    batch_size: int = pydantic.Field(128, ge=1)
    seq_len: int = pydantic.Field(100, ge=1)     # charlm only: truncated-BPTT chunk length
    augment: bool = True                         # classify: crops and flips; handwriting: ±10% scale
    max_points: int | None = pydantic.Field(None, ge=2)  # handwriting only: training window; None = whole lines


class OptimSection(StrictModel):
    """Adam with optional gradient-norm clipping."""

    lr: float = pydantic.Field(1e-3, gt=0)
    clip: float | None = pydantic.Field(1.0, gt=0)  # max gradient norm; None = off
    weight_decay: float = pydantic.Field(0.0, ge=0)


class ScheduleSection(StrictModel):
    """How long to train and how often to evaluate (and checkpoint, and report)."""

    steps: int = pydantic.Field(ge=1)
    eval_every: int = pydantic.Field(500, ge=1)
    eval_batches: int | None = pydantic.Field(None, ge=1)  # cap on validation batches; None = all
    test: bool = True


class TrainConfig(StrictModel):
    """One training run: task, data, model, optimiser, schedule."""

    task: Literal["charlm", "classify", "handwriting"]
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataSection
    model: AnyModelConfig
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection

    @pydantic.model_validator(mode="after")
    def _check_dataset(self) -> TrainConfig:
        if self.model.task != self.task:
            raise ValidationError.from_exception_data("model", [InitErrorDetails(
                type=PydanticCustomError("value_error", f"model {self.model.name!r} is trained by task "
                                         f"{self.model.task!r}, not {self.task!r}"),
                loc=("model", "name"), input=self.model.name)])
        wanted = DATASETS[self.task]
        other_tasks = {name for task, names in DATASETS.items() if task != self.task for name in names}
        by_name_only = self.task == "handwriting"  # IAM-OnDB lives under the data directory, by its name
        if self.data.dataset in other_tasks or (by_name_only and self.data.dataset not in wanted):
            raise ValidationError.from_exception_data("data", [InitErrorDetails(
                type=PydanticCustomError("value_error", f"{self.data.dataset!r} is not a dataset for task "
                                         f"{self.task!r}; expected one of {', '.join(wanted)}"
                                         f"{'' if by_name_only else ' or a path'}"),
                loc=("data", "dataset"), input=self.data.dataset)])
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``{"model.n_z": 4, "optim.lr": 0.001, ...}``), for MLflow params."""
        return _flatten(self.model_dump())

    def with_overrides(self, flat: dict[str, Any]) -> TrainConfig:
        """A new config with dotted keys replaced (``{"model.n_z": 8}``), validated again;
        errors name the dotted key."""
        data = self.model_dump()
        problems = []
        for dotted, value in flat.items():
            *parents, leaf = dotted.split(".")
            node = data
            for i, part in enumerate(parents):
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    problems.append((dotted, f"{'.'.join(parents[:i + 1])} is not a section"))
                    break
            else:
                node[leaf] = value
        try:
            config = validate(TrainConfig, data, "overrides")
        except ConfigError as err:
            raise ConfigError("overrides", problems + err.problems) from None
        if problems:
            raise ConfigError("overrides", problems)
        return config


def unknown_key(dotted: str, model: str) -> str | None:
    """Why ``dotted`` (``model.n_z``, ``optim.lr``) names no value of a training config whose model
    family is ``model``, or None when it does."""
    if dotted in ("task", "model.name"):
        return "fixed by the search space's `task` and `model`"
    node: type[pydantic.BaseModel] = TrainConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = {key: field for key, field in node.model_fields.items() if (node, key) != (TrainConfig, "task")}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the training config"
            return f"not a key of {where}; expected one of {', '.join(sorted(fields))}"
        child = MODELS[model] if (node, part) == (TrainConfig, "model") else fields[part].annotation
        is_section = isinstance(child, type) and issubclass(child, pydantic.BaseModel)
        if depth == len(parts) - 1 and is_section:
            return f"a section, not a value; name one of its keys ({', '.join(sorted(child.model_fields))})"
        if depth < len(parts) - 1 and not is_section:
            return f"{'.'.join(parts[:depth + 1])} is a value, not a section"
        node = child
    return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


SMOKE_MODEL_SIZES = {"hidden_size": 32, "hyper_size": 16, "depth": 10, "widen": 1}
"""Caps on model-size arguments in a smoke test (only those the model takes are touched)."""


def smoke_overrides(config: TrainConfig, steps: int = 4) -> dict[str, Any]:
    """Dotted overrides that shrink ``config`` to seconds: a few steps, two validation batches, the
    model capped by ``SMOKE_MODEL_SIZES``. Batch shapes are kept so the data path is the real one."""
    overrides: dict[str, Any] = {"schedule.steps": steps, "schedule.eval_every": max(steps // 2, 1),
                                 "schedule.eval_batches": 2}
    for key, cap in SMOKE_MODEL_SIZES.items():
        value = config.model.model_dump().get(key)
        if isinstance(value, int) and value > cap:
            overrides[f"model.{key}"] = cap
    return overrides
