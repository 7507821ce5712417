"""The training configuration: one typed, validated, frozen config per run.

A pipeline YAML file becomes a ``TrainConfig`` at the edge (``config_io.load_yaml``); the search
orchestration derives trial configs from it with ``with_overrides`` (dotted keys) and logs
``flat()`` as MLflow params.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import pydantic
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from hyperlab.config_io import StrictModel, validate
from hyperlab.errors import ConfigError

CHAR_DATASETS = ("ptb", "enwik8", "text8", "tinyshakespeare", "bundled")
IMAGE_DATASETS = ("mnist", "cifar10", "cifar10_folder")
DATA_FILLED_ARGS = ("vocab_size", "num_classes")
"""Model arguments taken from the data, never from the config."""


class DataSection(StrictModel):
    """Which data and how it is batched."""

    dataset: str = pydantic.Field(min_length=1)  # a known name (above) or a path
    batch_size: int = pydantic.Field(128, ge=1)
    seq_len: int = pydantic.Field(100, ge=1)     # charlm only: truncated-BPTT chunk length
    augment: bool = True                         # classify only


class ModelSection(StrictModel):
    """``name`` is a key of ``hyperlab.models.MODELS``; every other key is an argument of that
    builder, checked against ``model_arguments(name)``."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)

    name: str

    @pydantic.model_validator(mode="after")
    def _check_arguments(self) -> "ModelSection":
        from hyperlab.models import MODELS, model_arguments  # lazy: torch only when validating

        if self.name not in MODELS:
            raise ValidationError.from_exception_data("model", [InitErrorDetails(
                type=PydanticCustomError("model_name", f"unknown model; expected one of {', '.join(MODELS)}"),
                loc=("name",), input=self.name)])
        arguments = model_arguments(self.name)  # name -> default (inspect.Parameter.empty: required)
        given = self.model_extra or {}
        expected = ", ".join(key for key in arguments if key not in DATA_FILLED_ARGS)
        bad = [(key, "is filled from the data; remove it") if key in DATA_FILLED_ARGS else
               (key, f"not an argument of model {self.name!r}; expected one of {expected}")
               for key in given if key not in arguments or key in DATA_FILLED_ARGS]
        bad += [(key, None) for key, default in arguments.items()
                if default is inspect.Parameter.empty and key not in given and key not in DATA_FILLED_ARGS]
        kind = "model_argument"
        if not bad:  # the builder's own messages already quote the value: "value_error" adds no "(got ...)"
            bad, kind = _build_problems(self.name, given, arguments), "value_error"
        if bad:
            raise ValidationError.from_exception_data("model", [  # key "": the model section as a whole
                InitErrorDetails(type=PydanticCustomError(kind, msg) if msg else "missing",
                                 loc=(key,) if key else (), input=given.get(key)) for key, msg in bad])
        return self

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments given in the config (everything but ``name``)."""
        return dict(self.model_extra or {})


def _build_problems(name: str, given: dict[str, Any], arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """Argument values the builder rejects, found by sizing the model on the meta device (no memory,
    milliseconds) with placeholder data arguments: [(key, message)]."""
    from hyperlab.models import size_model

    placeholders = {key: 2 for key in DATA_FILLED_ARGS if key in arguments}
    try:
        size_model({"name": name, **given, **placeholders})
    except ConfigError as err:
        return [(key.removeprefix("model."), msg.replace("{", "(").replace("}", ")"))
                for key, msg in err.problems]
    except (TypeError, ValueError) as err:  # the builder's own message; which key it means is unknown
        return [("", builder_rejection(name, given, err))]
    return []


def builder_rejection(name: str, given: dict[str, Any], err: Exception) -> str:
    """A builder's TypeError/ValueError as a config problem: its message and every model key given
    (the builder does not say which one it means)."""
    keys = ", ".join(f"model.{key}={value!r}" for key, value in given.items()) or "no arguments"
    return f"{name!r} rejected {keys}: {err}"


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

    task: Literal["charlm", "classify"]
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataSection
    model: ModelSection
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection

    @pydantic.model_validator(mode="after")
    def _check_dataset(self) -> "TrainConfig":
        wrong, wanted = ((IMAGE_DATASETS, CHAR_DATASETS) if self.task == "charlm"
                         else (CHAR_DATASETS, IMAGE_DATASETS))
        if self.data.dataset in wrong:
            raise ValidationError.from_exception_data("data", [InitErrorDetails(
                type=PydanticCustomError("value_error", f"{self.data.dataset!r} is not a dataset for task "
                                         f"{self.task!r}; expected one of {', '.join(wanted)} or a path"),
                loc=("data", "dataset"), input=self.data.dataset)])
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``{"model.n_z": 4, "optim.lr": 0.001, ...}``), for MLflow params."""
        return _flatten(self.model_dump())

    def with_overrides(self, flat: dict[str, Any]) -> "TrainConfig":
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
        value = config.model.arguments().get(key)
        if isinstance(value, int) and value > cap:
            overrides[f"model.{key}"] = cap
    return overrides
