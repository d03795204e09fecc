"""The command line of a `GRPOConfig`: an argparse parser built from the dataclass fields, plus `--config file.yaml`.

Only the standard library is imported here (no torch, transformers or diffusers), so `train_*.py --help` answers at
once. Every field becomes a flag with its `metadata["help"]`, in the sections its `metadata["group"]` starts.
Booleans take `--flag`, `--flag true|false` or `--no_flag`; lists take several values; an optional field takes
`none` (or `null`) to unset it, except a field for which `none` is a value of its own (`metadata["none_is_a_value"]`:
`--report_to none` means no tracker, as `report_to: none` does in YAML), which only `null` unsets. Unlike `HfArgumentParser`, the parser remembers which values were *given* (in the YAML file or as
flags) as opposed to left at their defaults, which is what lets a model folder's sampling defaults and a resumed run's
saved config fill in everything else.
"""

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .fields import field_kind, load_yaml_values, str_to_bool

__all__ = ["CommandLine", "build_parser", "parse_command_line"]

_NONE_STRINGS = ("none", "null")


def _optional(convert, none_strings=_NONE_STRINGS):
    def parse(value: str):
        return None if str(value).strip().lower() in none_strings else convert(value)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, annotation: Any) -> None:
    kind, optional = field_kind(annotation)
    help_text = f.metadata.get("help", "")
    if f.default is not dataclasses.MISSING and f.default is not None:
        help_text += f" (default: {f.default})"
    help_text = help_text.replace("%", "%%")
    flag = f"--{f.name}"
    common = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    if kind == "bool":
        convert = _optional(str_to_bool) if optional else str_to_bool
        group.add_argument(flag, nargs="?", const=True, type=convert, metavar="{true,false}", **common)
        group.add_argument(f"--no_{f.name}", action="store_false", dest=f.name, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)  # fmt: skip
        return
    choices = f.metadata.get("choices")
    if kind == "str" and isinstance(choices, tuple):
        metavar = "{" + ",".join(map(str, choices)) + "}"
        group.add_argument(flag, type=_optional(str) if optional else str, metavar=metavar, **common)
        return
    if kind in ("int", "float", "str"):
        convert = {"int": int, "float": float, "str": str}[kind]
        none_strings = ("null",) if f.metadata.get("none_is_a_value") else _NONE_STRINGS
        group.add_argument(flag, type=_optional(convert, none_strings) if optional else convert, **common)
        return
    if kind == "choice":
        args = typing.get_args(annotation)
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), annotation)
        choices = list(typing.get_args(literal))
        metavar = "{" + ",".join(map(str, choices)) + "}"
        group.add_argument(flag, type=_optional(str) if optional else str, metavar=metavar, **common)
        return
    # lists, and the mapping-or-string fields (rewards, reward_kwargs): one or more values, parsed by the config
    group.add_argument(flag, nargs="+", metavar="VALUE", **common)


def build_parser(
    dataclass_types: Sequence[type], description: Optional[str] = None, epilog: Optional[str] = None, prog=None
) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` with one flag per field of `dataclass_types` (every default suppressed, so the
    parsed namespace holds only what was given) and `--config`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", default=None, metavar="FILE.yaml", help="YAML file of field: value pairs (flags win over it)."
    )
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(cls.__name__)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if "group" in f.metadata:  # the first field of a section
                group = parser.add_argument_group(f.metadata["group"])
            _add_field(group, f, hints[f.name])
    return parser


def _unwrap(name: str, value: Any, annotation: Any) -> Any:
    """argparse gives `nargs="+"` values as lists; a mapping-or-string field given one value gets the string."""
    kind, _ = field_kind(annotation)
    if kind == "other" and isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


@dataclass
class CommandLine:
    """What the command line gave: `values` (the YAML file's pairs, then the flags, flags winning), the YAML file,
    and the names given as flags."""

    values: dict[str, Any] = field(default_factory=dict)
    config_file: Optional[str] = None
    flags: set[str] = field(default_factory=set)


def parse_command_line(
    argv: Sequence[str],
    dataclass_types: Sequence[type],
    description: Optional[str] = None,
    epilog: Optional[str] = None,
    prog: Optional[str] = None,
) -> CommandLine:
    """Parse `argv` (no defaults filled in). `--help` prints and exits; an unknown flag or a bad value is an argparse
    usage error (exit code 2)."""
    parser = build_parser(dataclass_types, description=description, epilog=epilog, prog=prog)
    namespace = parser.parse_args(list(argv))
    given = vars(namespace)
    config_file = given.pop("config", None)
    values = load_yaml_values(config_file, dataclass_types, label="--config") if config_file else {}
    hints = {}
    for cls in dataclass_types:
        hints.update(typing.get_type_hints(cls))
    flags = {name: _unwrap(name, value, hints[name]) for name, value in given.items()}
    values.update(flags)
    return CommandLine(values=values, config_file=config_file, flags=set(flags))
