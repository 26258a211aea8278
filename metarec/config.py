"""Configuration written once: immutable validated models, the YAML loader and ``--set`` overrides.

Every runnable experiment is a YAML file read with the safe loader into a pydantic model: an unknown key
or an out-of-range value is a ``ValueError`` that names the key (as a dotted path) and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class FrozenConfig(BaseModel):
    """Base of every parameter model: immutable, an unknown field is an error, and so is a float that
    is NaN or infinite (it would turn into NaN rewards and observations, not into an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def validate_config(cls: type[BaseModel], values: dict[str, Any], where: str = "") -> Any:
    """Builds ``cls`` from ``values``, turning pydantic's error into a ``ValueError`` that names each
    bad field (as ``where.field.sub``) with what was expected."""
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            path = ".".join(str(p) for p in (where, *e["loc"]) if p != "")
            got = e.get("input")
            detail = e["msg"]
            if e["type"] == "extra_forbidden":
                detail = f"unknown field (known: {', '.join(_field_names(cls, e['loc'][:-1]))})"
            problems.append(f"{path or cls.__name__}: {detail}; got {got!r}")
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _field_names(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = cls
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return sorted(model.model_fields)
        model = field.annotation
    return sorted(model.model_fields)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"ppo.learning_rate=0.001"`` -> (``["ppo", "learning_rate"]``, ``0.001``): the value is parsed as
    YAML (so ``1e-3`` without a dot is a string until the typed field converts it)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set: expected KEY=VALUE (e.g. ppo.learning_rate=1e-3), got {text!r}")
    return key.split("."), yaml.safe_load(value)


def load_yaml_config(model: type[Any], path: str | Path, overrides: list[str] = ()) -> Any:
    """Reads a YAML file with the safe loader, applies ``--set KEY=VALUE`` overrides and validates it
    as ``model`` (a pydantic model; errors name the key)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: no such file {str(path)!r}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config: expected a mapping at the top of {path}, got {type(values).__name__}")
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {text}: {key} is not a mapping")
        node[keys[-1]] = value
    return validate_config(model, values)
