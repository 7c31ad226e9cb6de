"""Command-line options derived from the configuration models, so that every default and every
help text lives once, in the model's field.

`add_options` adds one ``--flag`` per field of a `fourbit.traces.config.StrictModel` (nested
models such as a job's ``train`` hyper-parameters are added flat: ``--epochs``), with the field's
description, what it allows, and its default in the job's own default instance (a sweep trains 1
epoch by default, the main job 20: each says so in its ``--help``). Options not given on the
command line are absent from the parsed namespace (argparse's ``SUPPRESS``); `given` collects the
given ones as nested dicts, and `build` applies them to the default instance (or to a spec read
from a file), so a flag that is not given never overrides anything.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from fourbit.traces.config import StrictModel, allowed_text, base_type, parse_text

__all__ = ["LazyChoices", "add_options", "build", "given"]

SEP = "__"
"""Separates a nested field's parts in argparse destinations (``m__train__epochs``; the ``m``
marks an option derived from a model)."""


class LazyChoices(Sequence):
    """Choices loaded on first use (help or a given value), so that building the parser imports
    nothing heavy: e.g. the model zoo's names. ``accepts`` widens what a value may be beyond the
    listed names (a recipe spec with parameters, a chip TOML path)."""

    def __init__(self, load: Callable[[], Sequence[str]], accepts: Callable[[str], bool] | None = None) -> None:
        self._load, self._items, self._accepts = load, None, accepts

    def _get(self) -> tuple:
        if self._items is None:
            self._items = tuple(self._load())
        return self._items

    def __getitem__(self, i):
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __contains__(self, value) -> bool:
        return value in self._get() or (self._accepts is not None and self._accepts(value))


def _text_type(annotation: Any, name: str) -> Callable[[str], Any]:
    """An argparse ``type``: the field's parser, with its error as argparse's one-line message."""

    def convert(text: str):
        try:
            return parse_text(annotation, text, name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _names_type(name: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse ``type`` for comma-separated names (an empty name is an error)."""

    def convert(text: str) -> tuple[str, ...]:
        names = tuple(p.strip() for p in text.split(","))
        if not all(names):
            raise argparse.ArgumentTypeError(f"{name} = {text!r}: an empty name between commas")
        return names

    return convert


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):  # as given: ints one after another, names comma-separated
        return (" " if all(isinstance(v, int) for v in value) else ",").join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_options(parser: argparse.ArgumentParser, model: type[StrictModel], default: BaseModel | None = None, *,
                exclude: Sequence[str] = (), choices: dict[str, Sequence] | None = None,
                notes: dict[str, str] | None = None, prefix: str = "") -> None:
    """Add an option per field of ``model`` to ``parser``.

    ``default``: the instance whose values are the defaults shown (default: the field defaults);
    ``exclude``: fields (dotted for nested ones, ``train.seed``) the command sets otherwise;
    ``choices``: field name -> allowed values (enforced, listed in the help); ``notes``: field
    name -> extra help (e.g. the valid recipe names of a free-form recipe spec). A nested model
    field adds its own fields, flat. Tuples of str take comma-separated text, tuples of int
    several values; bool fields get ``--flag/--no-flag``.
    """
    choices, notes = choices or {}, notes or {}
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if dotted in exclude or name in exclude:
            continue
        value = getattr(default, name) if default is not None else info.get_default(call_default_factory=True)
        annotation = info.annotation
        inner = annotation if isinstance(annotation, type) and issubclass(annotation, StrictModel) else None
        if inner is not None:
            add_options(parser, inner, value, exclude=exclude, choices=choices, notes=notes, prefix=f"{dotted}.")
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or name) + (f" ({notes[name]})" if name in notes else "")
        kwargs: dict[str, Any] = {"dest": SEP.join(["m", *dotted.split(".")]), "default": argparse.SUPPRESS}
        origin = typing.get_origin(annotation)
        args = tuple(base_type(a) for a in typing.get_args(annotation))
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple and args[:1] == (int,):
            kwargs.update(nargs="+", type=_text_type(int, name), metavar=name.upper().rstrip("S"))
        elif origin is tuple and args[:1] == (str,):
            kwargs.update(type=_names_type(name), metavar="A,B,...")
        else:
            kwargs.update(type=_text_type(annotation, name), metavar=name.upper())
            allowed = allowed_text(info)
            if name not in choices and not allowed.startswith("a string"):
                help_text += f"; {allowed}"
        if name in choices:
            kwargs["choices"] = choices[name]
            help_text += "; one of %(choices)s"
        parser.add_argument(flag, help=f"{help_text} (default: {_shown(value)})".replace("%", "%%")
                            .replace("%%(choices)s", "%(choices)s"), **kwargs)


def given(args: argparse.Namespace, prefix: str = "") -> dict:
    """The options given on the command line (only those), as nested dicts of field values;
    with ``prefix`` (``source.``) only that nested model's, without the prefix."""
    out: dict = {}
    for dest, value in vars(args).items():
        parts = dest.split(SEP)
        if parts[0] != "m":
            continue
        parts = parts[1:]
        if prefix:
            head = prefix.rstrip(".").split(".")
            if parts[:len(head)] != head:
                continue
            parts = parts[len(head):]
        if not parts:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tuple(value) if isinstance(value, list) else value  # nargs="+" gives a list
    return out


def build(base: StrictModel, values: dict) -> StrictModel:
    """``base`` with ``values`` (nested dicts from `given`) applied, nested models field by field.

    Raises ConfigError (one line) for a value the model refuses."""
    changes = {}
    for name, value in values.items():
        current = getattr(base, name, None)
        changes[name] = build(current, value) if isinstance(current, StrictModel) and isinstance(value, dict) \
            else value
    return base.replace(**changes)  # validated even without changes (a default may be incomplete)
