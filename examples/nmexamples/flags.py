"""Command-line flags derived from the fields of a frozen config dataclass, in one place.

One flag per field, ``--field-name`` (underscores become dashes); the default is the
value in a ``defaults`` instance, the type comes from the field's annotation, and a
field's ``metadata`` may add ``help`` and ``choices``::

    @dataclasses.dataclass(frozen=True)
    class Config:
        lr: float = field(3e-3, "peak learning rate")
        model: str = field("resnet", choices=("resnet", "vit"))

    parser = argparse.ArgumentParser()
    add_arguments(parser, Config())
    cfg = config_from_args(parser.parse_args(), Config())

Types: ``bool`` fields become ``--flag`` / ``--no-flag`` pairs (``BooleanOptionalAction``,
also for ``bool | None``); ``int``, ``float`` and ``str`` fields, optionally ``| None``
(then the flag takes a value of that type and defaults to the field's default). Used by
``examples/train.py``, ``examples/run_accuracy_table.py`` (through
:func:`nmexamples.training.add_recipe_arguments`) and ``examples/lm.py``; generic, for any
example's config.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

_SCALARS = (int, float, str)


def field(default, help: str | None = None, choices=None):
    """A dataclass field with the ``help`` and ``choices`` of its command-line flag."""
    metadata = {"help": help} if help else {}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def add_arguments(
    parser: argparse.ArgumentParser, defaults: Any, fields: Iterable[str] | None = None
) -> None:
    """Adds one flag per field of the dataclass instance ``defaults`` (or of ``fields``).

    Raises:
      TypeError: a field whose annotation is not ``bool``, ``int``, ``float`` or ``str``
        (optionally ``| None``).
    """
    hints = typing.get_type_hints(type(defaults))
    by_name = {f.name: f for f in dataclasses.fields(defaults)}
    for name in _names(defaults, fields):
        field = by_name[name]
        kind = _scalar_type(hints[name], name)
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": getattr(defaults, name), "dest": name}
        if "help" in field.metadata:
            kwargs["help"] = field.metadata["help"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" in field.metadata:
            kwargs["choices"] = list(field.metadata["choices"])
        parser.add_argument(flag, type=kind, **kwargs)


def config_kwargs(args: argparse.Namespace, defaults: Any, fields: Iterable[str] | None = None):
    """``{field: value}`` of the parsed flags that :func:`add_arguments` added."""
    return {name: getattr(args, name) for name in _names(defaults, fields)}


def config_from_args(
    args: argparse.Namespace, defaults: Any, fields: Iterable[str] | None = None, **overrides
):
    """``defaults`` with the parsed flags (and ``overrides``) replaced."""
    return dataclasses.replace(defaults, **{**config_kwargs(args, defaults, fields), **overrides})


def _names(defaults: Any, fields: Iterable[str] | None) -> list[str]:
    names = [f.name for f in dataclasses.fields(defaults)]
    if fields is None:
        return names
    fields = list(fields)
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"`fields` {unknown} are not fields of {type(defaults).__name__}.")
    return fields


def _scalar_type(hint: Any, name: str) -> type:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = tuple(a for a in args if a is not type(None))
        hint = args[0] if len(args) == 1 else hint
    if hint is bool or hint in _SCALARS:
        return hint
    raise TypeError(f"field `{name}`: no flag type for annotation {hint!r}.")
