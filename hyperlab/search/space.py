"""Search spaces: a YAML file becomes a frozen, validated ``SearchSpace``.

A search names its task and model family, its objectives with directions, the fixed training
settings, the space (dotted keys into the training config), the sampler, how many trials run and
how, an optional parameter budget, retries and an optional early-stopping rule::

    task: charlm
    model: char_rnn
    objectives: {model/n_params: min, val/bpc: min}
    fixed:                       # a training config (hyperlab.training.TrainConfig) minus task/model name
      data: {dataset: bundled, batch_size: 32, seq_len: 64}
      model: {cell: hyperlstm, hidden_size: 128}
      schedule: {steps: 200, eval_every: 100}
    space:
      model.n_z: {type: int, low: 1, high: 16, log: true}
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.cell: {type: choice, values: [hyperlstm, ln_hyperlstm]}
    sampler: {name: nsga2, seed: 0}
    trials: 8
    concurrency: 2
    resources: {cpu: 1, gpu: 0}
    budget: {max_params: 2.0e+6}
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml

from hyperlab import metrics
from hyperlab.config_io import StrictModel, parse_yaml, read_yaml, validate
from hyperlab.errors import ConfigError


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @pydantic.model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log)
        if self.step < 1:
            raise ValueError(f"step must be at least 1, got {self.step}")
        if self.log and self.step != 1:
            raise ValueError("log scale needs step 1")
        return self

    def distribution(self):
        import optuna

        # Optuna's own distribution: Tune's randint/lograndint shift the upper bound by one.
        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step)


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @pydantic.model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log)
        return self

    def distribution(self):
        import optuna

        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


class ChoiceParam(StrictModel):
    type: Literal["choice"]
    values: list[bool | int | float | str] = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _distinct(self):
        if len({json.dumps(v) for v in self.values}) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        return self

    def distribution(self):
        import optuna

        return optuna.distributions.CategoricalDistribution(self.values)


Param = Annotated[IntParam | FloatParam | ChoiceParam, pydantic.Field(discriminator="type")]


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"empty or inverted range: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")


class Sampler(StrictModel):
    name: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = pydantic.Field(default=None, ge=0)  # tpe and gp
    population_size: int | None = pydantic.Field(default=None, ge=2)   # nsga2


class Resources(StrictModel):
    """Resources per trial. ``gpu`` may be a fraction (trials share a GPU); ``gpu_per_million_params``
    grows a trial's GPU share with its model's parameter count, capped at ``max_gpu``. A share above one
    GPU is rounded up to whole GPUs (Ray places a fraction only within one GPU, so 1.2 would never be
    scheduled); ``gpu`` and ``max_gpu`` above 1 must be whole numbers."""

    cpu: float = pydantic.Field(default=1, gt=0)
    gpu: float = pydantic.Field(default=0, ge=0)
    gpu_per_million_params: float = pydantic.Field(default=0, ge=0)
    max_gpu: float = pydantic.Field(default=1, gt=0)

    @pydantic.field_validator("gpu", "max_gpu")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a share above one GPU must be a whole number of GPUs, got {value}")
        return value

    def for_params(self, n_params: int) -> dict[str, float]:
        gpu = min(self.gpu + self.gpu_per_million_params * n_params / 1e6, self.max_gpu)
        return {"CPU": self.cpu, "GPU": float(math.ceil(gpu)) if gpu > 1 else gpu}


class Budget(StrictModel):
    max_params: float = pydantic.Field(gt=0)


class EarlyStopping(StrictModel):
    """Asynchronous successive halving at rungs of evaluations: MO-ASHA on the search's objective vector,
    or ASHA on one reported metric (``hyperlab.search.scheduler``). Without a rule: ASHA when a metric is
    named, else MO-ASHA (ASHA with the search's one objective when it has only one)."""

    rule: Literal["moasha", "asha"] | None = None
    metric: str | None = None
    grace_period: int = pydantic.Field(default=1, ge=1, description="evaluations before a trial can be stopped")
    reduction_factor: float = pydantic.Field(default=3, gt=1)

    @pydantic.field_validator("metric")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and name not in metrics.METRICS:
            raise ValueError(f"unknown metric {name!r}; expected one of {sorted(metrics.METRICS)}")
        return name


class SearchSpace(StrictModel):
    task: Literal["charlm", "classify", "handwriting"]
    model: str
    objectives: dict[str, Literal["min", "max"]] = pydantic.Field(min_length=1)
    fixed: dict[str, Any] = pydantic.Field(default_factory=dict)
    space: dict[str, Param] = pydantic.Field(min_length=1)
    sampler: Sampler = Sampler()
    trials: int = pydantic.Field(default=8, ge=1)
    concurrency: int = pydantic.Field(default=2, ge=1)
    resources: Resources = Resources()
    budget: Budget | None = None
    retries: int = pydantic.Field(default=0, ge=0)
    early_stopping: EarlyStopping | None = None

    @pydantic.field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives: dict[str, str]) -> dict[str, str]:
        for name, direction in objectives.items():
            if name not in metrics.OBJECTIVE_METRICS:
                raise ValueError(f"unknown objective {name!r}; expected one of {list(metrics.OBJECTIVE_METRICS)}")
            if direction != metrics.direction(name):
                raise ValueError(f"{name} is better when {metrics.direction(name)}imised, not {direction}")
        return objectives

    @pydantic.field_validator("model")
    @classmethod
    def _model(cls, name: str) -> str:
        from hyperlab.models import MODELS

        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
        return name

    @pydantic.model_validator(mode="before")
    @classmethod
    def _early_stopping_default_rule(cls, data):
        rule, objectives = (data.get("early_stopping"), data.get("objectives")) if isinstance(data, dict) else (None, None)
        if isinstance(rule, dict) and rule.get("rule") is None and isinstance(objectives, dict):
            single = len(objectives) == 1
            rule = {**rule, "rule": "asha" if rule.get("metric") is not None or single else "moasha"}
            if single and rule.get("metric") is None:
                rule["metric"] = next(iter(objectives))
            data = {**data, "early_stopping": rule}
        return data

    @pydantic.model_validator(mode="after")
    def _early_stopping_rule(self) -> SearchSpace:
        rule = self.early_stopping
        if rule is not None and rule.rule == "asha" and rule.metric is None:
            raise ValueError("early_stopping.metric: rule asha compares one metric; name it, or use rule "
                             "moasha, which ranks the objectives")
        if rule is not None and rule.rule == "moasha" and rule.metric is not None:
            raise ValueError(f"early_stopping.metric: rule moasha ranks the objectives {list(self.objectives)}, "
                             f"not one metric; drop metric, or use rule asha")
        return self

    @pydantic.model_validator(mode="after")
    def _gpu_for_cuda(self) -> SearchSpace:
        if self.fixed.get("device") == "cuda" and not (self.resources.gpu or self.resources.gpu_per_million_params):
            raise ValueError("fixed.device is 'cuda' but resources give a trial no GPU share; set resources.gpu "
                             "(a fraction shares a GPU between trials) or device 'auto'")
        return self

    def distributions(self) -> dict:
        """Optuna distributions by dotted key, passed to OptunaSearch as they are."""
        return {key: param.distribution() for key, param in self.space.items()}

    def space_hash(self) -> str:
        """Identifies the search space (not its name): repeated searches of one space share it."""
        body = self.model_dump(mode="json", exclude={"sampler": {"seed"}})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def load_search_space(path: str | Path) -> tuple[SearchSpace, Any]:
    """Load, validate and check a search-space file against the training config.

    Returns the space and the base ``TrainConfig``. Every problem raises ``ConfigError`` naming the file
    and the key; nothing is created.
    """
    return check_search_space(read_yaml(path), path)


def parse_search_space(text: str, source: str) -> tuple[SearchSpace, Any]:
    """Like ``load_search_space`` for a file's text (a resumed search reads its own copy)."""
    return check_search_space(parse_yaml(text, source), source)


def check_search_space(data: Any, path: str | Path) -> tuple[SearchSpace, Any]:
    from hyperlab.training import TrainConfig

    space = validate(SearchSpace, data, path)
    _check_keys_exist(space, path)
    try:
        base = validate(TrainConfig, {"task": space.task, **_nested_lows(space)}, path)
    except ConfigError as err:  # name the key as it is written in the search-space file
        raise ConfigError(str(path), [(_key_in_file(space, key), msg) for key, msg in err.problems]) from None
    _check_objectives_reported(space, base, path)
    for key, param in space.space.items():  # every extreme of the space must make a valid config
        for value in _extremes(param):
            try:
                base.with_overrides({key: value})
            except ConfigError as err:
                raise ConfigError(str(path), [(f"space.{key}", msg) for _, msg in err.problems]) from None
    return space, base


def _check_objectives_reported(space: SearchSpace, base, path) -> None:
    """Every objective must be in every finished trial's report, or Optuna would drop the trial."""
    reported = set(metrics.TASK_METRICS[space.task])
    if not base.schedule.test:
        reported -= {m for m in reported if m.startswith("test/")}
    if not base.model.static_hypernetwork:
        reported.discard("model/compression_ratio")
    missing = [name for name in space.objectives if name not in reported]
    if missing:
        raise ConfigError(str(path), [("objectives", f"{name} is not reported by {space.task} training with "
                                       f"these settings; reported: {sorted(reported)}") for name in missing])


def check_budget(space: SearchSpace, base, data_dir: str | None, path) -> None:
    """A parameter budget that no configuration of the space meets is an error."""
    if space.budget is None:
        return
    smallest, overrides, _ = size_range(space, base, data_dir)
    if smallest > space.budget.max_params:
        shown = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the fixed model"
        raise ConfigError(str(path), [("budget.max_params", f"no configuration of the space fits the budget of "
                                       f"{space.budget.max_params:,.0f} parameters: the smallest corner ({shown}) "
                                       f"has {smallest:,}; raise the budget or shrink the space")])


def size_range(space: SearchSpace, base, data_dir: str | None) -> tuple[int, dict, int]:
    """(fewest parameters, the corner that has them, most parameters) over the corners of the space's
    model keys (each numeric key at its low or high end, every choice): parameter counts grow with each
    size key, so the extremes are corners. The most is capped by the budget."""
    import itertools

    from hyperlab.training import parameter_count

    keys = [key for key in space.space if key.startswith("model.")]
    corners = itertools.product(*(_extremes(space.space[key]) for key in keys))
    smallest, largest = None, 0
    for values in itertools.islice(corners, MAX_CORNERS):
        overrides = dict(zip(keys, values))
        n_params = parameter_count(base.with_overrides(overrides), data_dir)["total"]
        if smallest is None or n_params < smallest[0]:
            smallest = (n_params, overrides)
        largest = max(largest, n_params)
    if space.budget is not None:
        largest = min(largest, int(space.budget.max_params))
    return smallest[0], smallest[1], largest


MAX_CORNERS = 4096  # corners sized by check_budget (12 keys with two ends each)


def _key_in_file(space: SearchSpace, key: str) -> str:
    if key in ("task", "model.name"):
        return key.split(".")[0]
    return f"space.{key}" if key in space.space else f"fixed.{key}"


def _extremes(param) -> list:
    return param.values if isinstance(param, ChoiceParam) else [param.low, param.high]


def _nested_lows(space: SearchSpace) -> dict:
    """The fixed settings with each searched key set to a valid value, so the base config validates
    even when the searched keys have no default."""
    nested = json.loads(json.dumps(space.fixed))
    nested["model"] = {**nested.get("model", {}), "name": space.model}
    for key, param in space.space.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _extremes(param)[0]
    return nested


def _check_keys_exist(space: SearchSpace, path) -> None:
    """Every dotted key of the space names a value of the training config (its typed fields)."""
    from hyperlab.training.config import unknown_key

    problems = [(f"space.{key}", why) for key in space.space if (why := unknown_key(key, space.model))]
    if problems:
        raise ConfigError(str(path), problems)


def dump(space: SearchSpace) -> str:
    """The validated space as YAML (logged with every search)."""
    return yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
