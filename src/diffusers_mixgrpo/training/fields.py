"""How a dataclass config's values are read and checked: one copy for `GRPOConfig` and its command line.

A field declares what it accepts in its annotation and `metadata`; nothing else needs to know the field:

- the annotation gives the kind (`bool`, `int`, `float`, `str`, `list[str]`, `list[int]`, optional or not):
  `coerce_value` reads strings that spell a value of that kind (`"no"` -> `False`, `"1e-4"` -> `1e-4`, `"to_q,to_k"`
  -> a list, `"0,3,5"` or `["0", "3", "5"]` -> `[0, 3, 5]`) and refuses anything else in one sentence;
- `metadata["choices"]` (a tuple, or a function returning one), `metadata["range"]` (an interval such as
  `"[1, inf)"` or `"(0, 1]"`), `metadata["multiple_of"]` and `metadata["if_empty"]` are checked by `check_value`;
- `metadata["group"]` on the first field of a group titles the `--help` section it starts, `metadata["whole_string"]`
  keeps a string given for a list as one item, `metadata["secret"]` keeps a value out of saved configs,
  `metadata["none_is_a_value"]` makes the command line keep `none` as the string `"none"` (only `null` unsets it).

`load_yaml_values` reads the `field: value` pairs of a YAML file for `GRPOConfig.from_yaml` and `--config` alike.
Only the standard library is imported (PyYAML on use), so `--help` answers at once.
"""

import argparse
import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

from .errors import ConfigError

__all__ = [
    "check_known_keys",
    "check_value",
    "coerce_value",
    "describe_yaml_error",
    "field_kind",
    "load_yaml_values",
    "str_to_bool",
]

TRUE_STRINGS = ("true", "yes", "y", "on", "1")
FALSE_STRINGS = ("false", "no", "n", "off", "0")


def str_to_bool(value: str) -> bool:
    """`"true"`/`"yes"`/`"1"` -> True, `"false"`/`"no"`/`"0"` -> False; anything else is an argparse error."""
    lowered = str(value).strip().lower()
    if lowered in TRUE_STRINGS:
        return True
    if lowered in FALSE_STRINGS:
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean; use true or false.")


def field_kind(annotation: Any) -> tuple[str, bool]:
    """What a field's annotation asks for, as `(kind, optional)`; kind is one of "bool", "int", "float", "str",
    "list", "choice" (a `Literal`) or "other"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = False
    if origin is Union:
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if len(members) != 1:
            return "other", optional
        annotation = members[0]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "choice", optional
    if origin is list:
        return "list", optional
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation is cls:
            return kind, optional
    return "other", optional


def coerce_value(f: dataclasses.Field, value: Any, annotation: Any) -> Any:
    """`value` as the type `annotation` declares, or a `ConfigError` naming the field.

    Strings that spell a boolean become booleans; a string given for a list becomes a list (split on commas, unless
    `metadata["whole_string"]`); a numeric string for a float field is read as a number (YAML reads `1e-4` without a
    dot as a string). A choice field's type is left to its `choices` check.
    """
    kind, optional = field_kind(annotation)
    if value is None:
        if optional or kind == "other":
            return None
        raise ConfigError(f"{f.name}=None is not allowed; it needs a value.")
    if kind == "bool":
        if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS + FALSE_STRINGS:
            return value.strip().lower() in TRUE_STRINGS
        if not isinstance(value, bool):
            raise ConfigError(f"{f.name}={value!r} is not allowed; it must be true or false.")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{f.name}={value!r} is not allowed; it must be an integer.")
    elif kind == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a number.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a number.")
        return float(value)
    elif kind == "str":
        if not isinstance(value, str) and "choices" not in f.metadata:
            raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a string.")
    elif kind == "list" and _list_item(annotation) is int:
        return _int_list(f.name, value)
    elif kind == "list":
        whole = f.metadata.get("whole_string", False)
        if isinstance(value, str):
            value = [value] if whole else [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a list of strings.")
        return list(value) if whole else [v for v in value if v.strip()]
    return value


def _list_item(annotation: Any) -> Any:
    """The item type of a `list[...]` or `Optional[list[...]]` annotation."""
    if typing.get_origin(annotation) is Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    args = typing.get_args(annotation)
    return args[0] if args else str


def _int_list(name: str, value: Any) -> list[int]:
    """A list of integers from YAML (`[0, 3, 5]`), one string (`"0,3,5"`) or the command line's strings (`0 3 5`,
    `0,3,5`)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        parts = [p for p in item.replace(",", " ").split()] if isinstance(item, str) else [item]
        for part in parts:
            if isinstance(part, str) and part.strip().lstrip("+-").isdigit():
                part = int(part)
            if isinstance(part, bool) or not isinstance(part, int):
                raise ConfigError(
                    f"{name}={value!r} is not allowed; it must be a list of integers (e.g. 0,3,5 or [0, 3, 5])."
                )
            out.append(part)
    return out


def _interval(spec: str) -> tuple[float, float, bool, bool]:
    """`"[1, inf)"` -> `(1.0, inf, False, True)`: the bounds and whether each end is open."""
    low, high = (float(part) for part in spec[1:-1].split(","))
    return low, high, spec[0] == "(", spec[-1] == ")"


def check_value(name: str, value: Any, metadata: Mapping[str, Any]) -> None:
    """Check a (coerced) value against its field's `choices`, `range`, `multiple_of` and `if_empty` metadata; `None`
    (an unset optional field) passes. A failure is a `ConfigError` naming the value and what is allowed."""
    if value is None:
        return
    choices = metadata.get("choices")
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}.")
    if "if_empty" in metadata and not (value.strip() if isinstance(value, str) else value):
        raise ConfigError(f"{name}={value!r} {metadata['if_empty']}.")
    multiple = metadata.get("multiple_of")
    if multiple is not None and (value <= 0 or value % multiple):
        raise ConfigError(f"{name}={value!r} is not allowed; it must be a positive multiple of {multiple}.")
    if "range" not in metadata:
        return
    low, high, low_open, high_open = _interval(metadata["range"])
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} is not allowed; it must be a finite number.")
    if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        if isinstance(value, int) and not low_open and high == math.inf:
            raise ConfigError(f"{name}={value!r} is not allowed; it must be an integer >= {int(low)}.")
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{name}={value!r} is not allowed; it must lie in {interval}.")


def check_known_keys(values: Mapping[str, Any], dataclass_types: Sequence[type], where: str = "") -> None:
    """Every key of `values` is an init field of one of `dataclass_types`; else a `ConfigError` with the closest name."""
    known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            owners = " or ".join(cls.__name__ for cls in dataclass_types)
            raise ConfigError(f"{where}{key!r} is not a {owners} field.{hint}")


def describe_yaml_error(err: Exception) -> str:
    """One line for a YAML or decoding error: `line 3, column 7: mapping values are not allowed here`."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(err).split()).rstrip(".")


def load_yaml_values(
    path: Union[str, os.PathLike], dataclass_types: Sequence[type], label: str = "The config file"
) -> dict[str, Any]:
    """The `field: value` pairs of a YAML file; a missing file, a non-mapping or an unknown key fails in one
    sentence (with a suggestion for a misspelt key). `label` names the file in the messages (`"--config"`)."""
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{label} {path!r} does not exist or is not a file.")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{label} {path!r} is not a readable YAML file ({describe_yaml_error(err)}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path!r} must hold a mapping of field: value pairs, got {type(values).__name__}.")
    check_known_keys(values, dataclass_types, where=f"{path}: ")
    return values
