"""Validate once, at the edge: YAML files and dicts become frozen, typed pydantic configs.

Every error names the file, the dotted key and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from hyperlab.errors import ConfigError

M = TypeVar("M", bound=pydantic.BaseModel)


class StrictModel(pydantic.BaseModel):
    """Base for every config: unknown keys are errors, values are immutable after validation."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file or a syntax error becomes a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [("", "no such file")])
    return parse_yaml(path.read_text(), str(path))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError naming ``source``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [("", f"not valid YAML: {err}")]) from None


def validate(model: type[M], data: Any, file: str | Path | None = None) -> M:
    """Validate ``data`` into ``model``; pydantic's errors become one ConfigError naming every key."""
    if not isinstance(data, dict):
        raise ConfigError(str(file) if file else None,
                          [("", f"expected a mapping of keys to values, got {type(data).__name__}")])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(str(file) if file else None, _problems(err)) from None


def load_yaml(model: type[M], path: str | Path) -> M:
    """Read and validate a YAML file into ``model``."""
    return validate(model, read_yaml(path), path)


def _problems(err: pydantic.ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        key = ".".join(str(part) for part in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if "input" in e and e["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {e['input']!r})"
        problems.append((key, msg))
    return problems
