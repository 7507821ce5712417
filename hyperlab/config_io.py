"""Validate once, at the edge: YAML files and dicts become frozen, typed pydantic configs.

Every error names the file, the dotted key and what was expected, in one bounded line per problem.
YAML is read with a safe loader that also refuses what a config never needs and an attacker would
use: files over ``MAX_FILE_BYTES``, text that is not UTF-8, duplicate keys, and aliases whose
expansion is far larger than the file ("billion laughs").
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from hyperlab.errors import ConfigError

M = TypeVar("M", bound=pydantic.BaseModel)

MAX_FILE_BYTES = 1 << 20      # a config is a few hundred bytes; a search space's saved copy too
MAX_ECHO = 80                 # characters of a bad value quoted in an error
EXPANSION_PER_BYTE = 10       # nodes an expanded document may hold per byte of its text (plus a floor)
EXPANSION_FLOOR = 10_000


class StrictModel(pydantic.BaseModel):
    """Base for every config: unknown keys are errors, values are immutable after validation, no
    coercion between types (``"3"`` is not 3, ``true`` is not 1), and no NaN or infinity."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; every way it can be unreadable becomes a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [("", "no such file")])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(str(path), [("", f"{size:,} bytes; a config file is at most {MAX_FILE_BYTES:,}")])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start:err.start + 1]
        raise ConfigError(str(path), [("", f"not UTF-8 text (byte {err.start}: {bad!r})")]) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely (see the module docstring); errors name ``source``."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(source, [("", f"{len(text):,} characters; a config is at most {MAX_FILE_BYTES:,}")])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node, {})
        limit = EXPANSION_FLOOR + EXPANSION_PER_BYTE * len(text)
        if expanded > limit:
            raise ConfigError(source, [("", f"its aliases expand to {expanded:,} values, far more than a "
                                            f"{len(text):,}-character file can mean (at most {limit:,}); "
                                            "write the values out instead")])
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(source, [("", f"not valid YAML: {_yaml_problem(err)}")]) from None
    finally:
        loader.dispose()


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML says keys are unique;
    PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {_bounded(repr(key), MAX_ECHO)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes the document has with every alias expanded, counted over the node graph (each
    shared node once, memoised), so measuring a bomb costs what reading its text does."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a recursive alias counts once where it closes the loop
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    return total


def validate(model: type[M], data: Any, file: str | Path | None = None) -> M:
    """Validate ``data`` into ``model``; pydantic's errors become one ConfigError naming every key."""
    if not isinstance(data, dict):
        raise ConfigError(str(file) if file else None,
                          [("", f"expected a mapping of keys to values, got {type(data).__name__}")])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(str(file) if file else None, problems(err, model)) from None


def load_yaml(model: type[M], path: str | Path) -> M:
    """Read and validate a YAML file into ``model``."""
    return validate(model, read_yaml(path), path)


def problems(err: pydantic.ValidationError, model: type[pydantic.BaseModel]) -> list[tuple[str, str]]:
    """pydantic's errors as (dotted key, message): union tags dropped from the key, values quoted
    at most ``MAX_ECHO`` characters long."""
    found = []
    for e in err.errors():
        key = ".".join(str(part) for part in _without_union_tags(model, e["loc"]))
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "union_tag_invalid":
            tag, given = e["ctx"]["discriminator"].strip("'"), _bounded(repr(e["ctx"]["tag"]), MAX_ECHO)
            key, msg = f"{key}.{tag}" if key else tag, f"unknown {given}; expected one of {e['ctx']['expected_tags']}"
        elif e["type"] == "union_tag_not_found":
            tag = e["ctx"]["discriminator"].strip("'")
            key, msg = f"{key}.{tag}" if key else tag, "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if "input" in e and e["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {_bounded(repr(e['input']), MAX_ECHO)})"
        found.append((key, _bounded(msg, 400)))
    return found


def _without_union_tags(model: Any, loc: tuple) -> list:
    """``loc`` with the tags pydantic inserts after a discriminated union (``model.char_rnn.n_z`` ->
    ``model.n_z``), found by walking the config types along the path."""
    kept, current, parts = [], (model, None), list(loc)
    while parts:
        part = parts.pop(0)
        kept.append(part)
        current = _field_type(current[0], part)
        members = _union_members(*current)
        if members and parts and parts[0] in members:
            current = (members[parts.pop(0)], None)
    return kept


def _field_type(current: Any, part: Any) -> tuple[Any, str | None]:
    """(annotation, discriminator) of ``part`` inside the type ``current``."""
    if isinstance(current, type) and issubclass(current, pydantic.BaseModel) and part in current.model_fields:
        field = current.model_fields[part]
        return field.annotation, field.discriminator if isinstance(field.discriminator, str) else None
    if typing.get_origin(current) is typing.Annotated:
        current = typing.get_args(current)[0]
    origin, args = typing.get_origin(current), typing.get_args(current)
    if origin is dict and len(args) == 2:
        return args[1], None
    if origin in (list, tuple) and args:
        return args[0], None
    return None, None


def _union_members(annotation: Any, discriminator: str | None) -> dict[str, type]:
    """Tag -> model class of a discriminated union of pydantic models."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *metadata = typing.get_args(annotation)
        discriminator = next((m.discriminator for m in metadata
                              if isinstance(getattr(m, "discriminator", None), str)), discriminator)
    if discriminator is None or typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return {}
    members = {}
    for member in typing.get_args(annotation):
        if isinstance(member, type) and issubclass(member, pydantic.BaseModel) and discriminator in member.model_fields:
            for value in typing.get_args(member.model_fields[discriminator].annotation):
                members[value] = member
    return members


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line report in one line: where and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return _bounded(" ".join(f"{where}{problem}".split()), 300)


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text):,} characters)"
