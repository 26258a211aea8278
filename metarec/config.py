"""Configuration written once: immutable validated models, the YAML loader and ``--set`` overrides.

Every runnable experiment is a YAML file read with the strict safe loader (:func:`load_yaml_text`: no
aliases or anchors, no duplicate keys) into a pydantic model: an unknown key, a wrong type or an
out-of-range value is a ``ValueError`` that names the key (as a dotted path) and what was expected.
A bool is not a number: ``total_steps: true`` is an error, not 1.
"""

from __future__ import annotations

import functools
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

#: The largest config file read (a config is a few KB; anything near this is not one).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: The longest value shown in an error message.
MAX_VALUE_CHARS = 80

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 6
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = MAX_VALUE_CHARS, 40, MAX_VALUE_CHARS


def short_repr(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, built without ever making the whole repr (a
    deeply shared or huge value costs no more than a small one)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails (an int past Python's digit limit, a broken __repr__)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FrozenConfig(BaseModel):
    """Base of every parameter model: immutable, an unknown field is an error, and so is a float that
    is NaN or infinite (it would turn into NaN rewards and observations, not into an error), and a bool
    given for a number (YAML's ``true`` would otherwise count as 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in numeric_fields(cls):
            raise PydanticCustomError("bool_for_number", "Input should be a number, not a bool")
        return value


@functools.cache
def numeric_fields(cls: type[BaseModel]) -> frozenset[str]:
    """The fields of ``cls`` annotated as int or float (optionally ``| None``): where a bool is refused."""
    out = set()
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        kinds = [a for a in (typing.get_args(annotation) if union else (annotation,)) if a is not type(None)]
        if kinds and all(kind in (int, float) for kind in kinds):
            out.add(name)
    return frozenset(out)


def validate_config(cls: type[BaseModel], values: dict[str, Any], where: str = "") -> Any:
    """Builds ``cls`` from ``values``, turning pydantic's error into a ``ValueError`` that names each
    bad field (as ``where.field.sub``) with what was expected and the value given (shortened)."""
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            if not e["loc"] and e["type"] == "value_error":  # a check of the whole model: it names its fields
                message = str(e.get("ctx", {}).get("error", e["msg"]))
                problems.append(f"{where}: {message}" if where else message)
                continue
            path = ".".join(str(p) for p in (where, *e["loc"]) if p != "")
            detail = e["msg"]
            if e["type"] == "extra_forbidden":
                detail = f"unknown field (known: {', '.join(_field_names(cls, e['loc'][:-1]))})"
            problems.append(f"{path or cls.__name__}: {detail}; got {short_repr(e.get('input'))}")
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _field_names(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = cls
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return sorted(model.model_fields)
        model = field.annotation
    return sorted(model.model_fields)


class StrictSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: anchors and aliases are refused (a few hundred bytes of nested
    aliases expand to billions of nodes), and so is a key given twice in one mapping."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (&anchor/*alias) are not supported", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a complex key: the base class says what is wrong with it
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short_repr(key)} (first at line {seen[key]})", key_node.start_mark
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str, where: str) -> Any:
    """``text`` read with :class:`StrictSafeLoader`; any problem is a one-line ``ValueError``
    ``"WHERE line N: problem"``."""
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(err.problem or err.context or "invalid YAML").split())
        raise ValueError(f"{where}{line}: {problem}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"{where}: {' '.join(str(err).split())[:200]}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"ppo.learning_rate=0.001"`` -> (``["ppo", "learning_rate"]``, ``0.001``): the value is parsed as
    YAML (so ``1e-3`` without a dot is a string until the typed field converts it)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set: expected KEY=VALUE (e.g. ppo.learning_rate=1e-3), got {short_repr(text)}")
    return key.split("."), load_yaml_text(value, f"--set {short_repr(text, 40)}")


SHIPPED = "metarec:"


def config_path(text: str | Path) -> Path:
    """The config file ``text`` names: ``metarec:NAME`` (or ``metarec:NAME.yaml``) is a config shipped in the
    package (the repository's ``configs/NAME.yaml``, also in a wheel); anything else is a path. An unknown
    shipped name is a ``ValueError`` that lists the shipped ones."""
    text = str(text)
    if not text.startswith(SHIPPED):
        return Path(text)
    from importlib.resources import files

    folder = files("metarec.configs")
    shipped = sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    name = text[len(SHIPPED) :].removesuffix(".yaml")
    if name not in shipped:
        listed = ", ".join(shipped)
        raise ValueError(f"config: no shipped config {text!r}; expected {SHIPPED}NAME with NAME one of {listed}")
    return Path(str(folder / f"{name}.yaml"))


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in ``path`` (strict safe loader); a missing, unreadable or malformed file is a
    one-line ``ValueError`` naming it (an ``OSError`` where reading it fails)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: no such file {str(path)!r}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"config: {path} is {size} bytes; expected a YAML config of at most {MAX_CONFIG_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config: {path} is not UTF-8 text (byte {err.start})") from None
    return load_yaml_text(text, f"config: {path}")


def load_yaml_config(model: type[Any], path: str | Path, overrides: list[str] = ()) -> Any:
    """Reads a YAML file with the strict safe loader, applies ``--set KEY=VALUE`` overrides and validates
    it as ``model`` (a pydantic model; errors name the key)."""
    values = read_yaml_file(path) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config: expected a mapping at the top of {path}, got {type(values).__name__}")
    return validate_config(model, apply_overrides(values, overrides))


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``values`` (changed in place, and returned) with each ``--set KEY.SUB=VALUE`` of ``overrides`` set in
    its nested mapping."""
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {short_repr(text, 40)}: {key} is not a mapping")
        node[keys[-1]] = value
    return values
