"""Strict configuration models and their one-line errors.

Every configuration of fourbit (the chip, the training hyper-parameters, recipe parameters,
sweep specs, the jobs of the command line) is a `StrictModel`: a pydantic v2 model in strict mode,
frozen, with unknown keys refused. A value of the wrong type is an error, never converted (a TOML
``rows = "32"`` is refused); the one place where text becomes a value is `parse_text`, which the
command line calls with the field's own type (``--set array.rows=64``). Every error is a
`ConfigError` of one line naming the dotted field, the value and what is allowed, e.g.
``array.rows = 0 is out of range: allowed an integer >= 1``.
"""

from __future__ import annotations

import contextvars
import math
import os
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from fourbit.traces.errors import ConfigError

__all__ = ["IntChoice", "Listed", "PathText", "StrictModel", "allowed_text", "base_type", "field_info",
           "first_difference", "parse_text", "set_dotted"]


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathText = Annotated[str, BeforeValidator(_fspath)]
"""A file or directory path: text, or a `pathlib.Path` (kept as its text)."""


def _as_tuple(value: Any) -> Any:
    """A list (TOML arrays, Python lists) as a tuple, nested lists too; anything else as it is."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def Listed(item: Any) -> Any:  # noqa: N802 (a type factory, named like the types it makes)
    """The type of a field holding a sequence of ``item``: a tuple (frozen), given as a list or a
    tuple; its items are validated strictly as ``item``."""
    return Annotated[tuple[item, ...], BeforeValidator(_as_tuple)]


def _whole(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def IntChoice(values: tuple[int, ...]) -> Any:  # noqa: N802 (a type factory)
    """An integer that is one of ``values``, refusing ``4.0`` or ``True`` (which a plain
    ``Literal`` would take as 4 or 1)."""
    return Annotated[Literal[values], BeforeValidator(_whole)]  # type: ignore[valid-type]


_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")
_DEPTH = contextvars.ContextVar("fourbit_config_depth", default=0)
"""How many model validations are under way: a section validated inside a larger model lets its
errors reach the outer one (which names the whole dotted path) instead of converting them."""


class StrictModel(BaseModel):
    """Base of fourbit's configuration models: strict types, frozen, unknown keys refused.

    Constructing one (``Model(**fields)``, `parse`, `replace`) raises `ConfigError` with one line
    naming the dotted field (prefixed by the class's ``PATH``, e.g. ``array``), the value and the
    allowed range or choices.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", arbitrary_types_allowed=True)
    PATH: ClassVar[str] = ""
    """The dotted name of this model where it is a section of a larger one (error messages)."""

    def __init__(self, **data: Any) -> None:
        depth = _DEPTH.get()
        token = _DEPTH.set(depth + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if depth > 0:  # a section of a model being validated: the outer one reports
                raise
            raise ConfigError(describe(exc, type(self), prefix=type(self).PATH)) from None
        finally:
            _DEPTH.reset(token)

    @classmethod
    def parse(cls, data: Any, source: str = "") -> typing.Self:
        """Validate ``data`` (nested dicts, as read from TOML); ``source`` starts the message.

        Raises ConfigError (one line: source, dotted field, value, allowed)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source + ': ' if source else ''}expected a table of fields, got {data!r}")
        token = _DEPTH.set(_DEPTH.get() + 1)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe(exc, cls, source=source, prefix=cls.PATH)) from None
        finally:
            _DEPTH.reset(token)

    def replace(self, **changes: Any) -> typing.Self:
        """A validated copy with ``changes``; the fields set explicitly stay set (`fields_set`)."""
        return type(self).parse({**{k: getattr(self, k) for k in self.model_fields_set}, **changes})


# ------------------------------------------------------------------------------------------------
# field lookup
# ------------------------------------------------------------------------------------------------
def base_type(annotation: Any) -> Any:
    """``annotation`` without ``Optional`` and ``Annotated`` (``int | None`` -> ``int``)."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    a = base_type(annotation)
    return a if isinstance(a, type) and issubclass(a, BaseModel) else None


def field_info(model: type[BaseModel], dotted: str) -> tuple[FieldInfo | None, Any]:
    """The field info and the value type of the dotted field ``dotted`` of ``model``.

    A dict-valued field takes a key as the next part: ``units.int4.macs_per_pe`` (a dict of
    models), ``energy.overrides.mac.int4`` (a dict of numbers: the rest of the name is the key).

    Raises ConfigError naming the unknown part and the fields it could have been.
    """
    parts = dotted.split(".")
    current: type[BaseModel] = model
    path: list[str] = []
    i = 0
    while i < len(parts):
        name = parts[i]
        fields = current.model_fields
        if name not in fields:
            where = ".".join(path) or getattr(current, "PATH", "") or "the top level"
            raise ConfigError(f"unknown field {'.'.join([*path, name])}; fields of [{where}]: {', '.join(fields)}")
        info = fields[name]
        path.append(name)
        annotation = base_type(info.annotation)
        if typing.get_origin(annotation) is dict:
            key_type, value_type = typing.get_args(annotation)
            if i + 1 == len(parts):
                return info, annotation
            key = ".".join(parts[i + 1:]) if _model_of(value_type) is None else parts[i + 1]
            if typing.get_origin(key_type) is Literal and key not in typing.get_args(key_type):
                raise ConfigError(f"{'.'.join(path)}: unknown key {key!r}; allowed {allowed_text(None, key_type)}")
            inner = _model_of(value_type)
            if inner is None:
                return info, value_type
            path.append(key)
            current, i = inner, i + 2
            continue
        inner = _model_of(annotation)
        if inner is not None and i + 1 < len(parts):
            current, i = inner, i + 1
            continue
        if i + 1 < len(parts):
            raise ConfigError(f"unknown field {dotted!r}: {'.'.join(path)} has no fields")
        return info, annotation
    raise ConfigError(f"unknown field {dotted!r}")


def set_dotted(data: dict, model: type[BaseModel], dotted: str, value: Any) -> None:
    """Set the dotted field ``dotted`` of ``model`` in the nested dict ``data`` (in place).

    Raises ConfigError for an unknown field (see `field_info`)."""
    field_info(model, dotted)  # the name is checked against the model first
    parts = dotted.split(".")
    node, current = data, model
    i = 0
    while i < len(parts) - 1:
        name = parts[i]
        annotation = base_type(current.model_fields[name].annotation)
        if typing.get_origin(annotation) is dict:
            value_type = typing.get_args(annotation)[1]
            table = node.setdefault(name, {})
            if _model_of(value_type) is None:  # the rest of the name is one key
                table[".".join(parts[i + 1:])] = value
                return
            node, current, i = table.setdefault(parts[i + 1], {}), _model_of(value_type), i + 2
            continue
        node, current, i = node.setdefault(name, {}), _model_of(annotation), i + 1
    node[parts[-1]] = value


def first_difference(key: str, a: Any, b: Any) -> tuple[str, Any, Any]:
    """The dotted name and the two values of the first difference between two JSON-like values
    (``key`` names their root), e.g. ``("train_config.epochs", 3, 4)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(dict.fromkeys([*a, *b])):
            if a.get(k) != b.get(k):
                return first_difference(f"{key}.{k}" if key else str(k), a.get(k), b.get(k))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(f"{key}.{i}" if key else str(i), x, y)
    return key, a, b


# ------------------------------------------------------------------------------------------------
# text from the command line
# ------------------------------------------------------------------------------------------------
def parse_text(annotation: Any, text: str, name: str) -> Any:
    """Convert command-line ``text`` to a value of the field type ``annotation``.

    int: a whole number (``64``, ``1e6``; no ``_`` digit separators); float: a number (``inf`` allowed where the field
    allows it); bool: true/false, on/off, yes/no, 1/0; a Literal: one of its values, compared as
    text; a class with a ``parse`` classmethod (an accumulator ``fp16/g4/c64``): that method;
    str: the text. The result is then validated by the model as usual.

    Raises ConfigError naming ``name``, the text and the expected kind of value.
    """
    t = base_type(annotation)
    text = text.strip()
    low = text.lower()
    if t in (int, float) and "_" in text:  # Python's int() and float() would read 1_6 as 16
        raise ConfigError(f"{name} = {text!r}: expected a{'n integer' if t is int else ' number'} (digits only)")
    if typing.get_origin(t) is Literal:
        options = typing.get_args(t)
        if all(isinstance(o, int) and not isinstance(o, bool) for o in options):
            value = parse_text(int, text, name)
            if value in options:
                return value
            raise ConfigError(f"{name} = {value!r} is out of range: allowed {allowed_text(None, t)}")
        for option in options:
            if str(option).lower() == low:
                return option
        raise ConfigError(f"{name} = {text!r} is out of range: allowed {allowed_text(None, t)}")
    if t is bool:
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{name} = {text!r}: expected true or false (on/off, yes/no, 1/0)")
    if t is int:
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer():
                return int(f)
        raise ConfigError(f"{name} = {text!r}: expected an integer")
    if t is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name} = {text!r}: expected a number") from None
        if math.isinf(value) and low.lstrip("+-") not in ("inf", "infinity"):
            raise ConfigError(f"{name} = {text!r} overflows a number; write inf for an infinite value")
        return value
    if t is str:
        return text
    if isinstance(t, type) and hasattr(t, "parse"):
        try:
            return t.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{name} = {text!r}: {exc}") from None
    raise ConfigError(f"{name} cannot be given as text on the command line (a {allowed_text(None, t)})")


# ------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def allowed_text(info: FieldInfo | None, annotation: Any = None) -> str:
    """What a field allows, in words: ``an integer >= 1``, ``one of 'ws', 'os', 'is'``, ...

    A field may state it itself (``Field(json_schema_extra={"allowed": "..."})``)."""
    metadata = list(info.metadata) if info is not None else []
    if info is not None:
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "allowed" in extra:
            return str(extra["allowed"])
        annotation = info.annotation if annotation is None else annotation
    if typing.get_origin(annotation) is typing.Annotated:  # constraints of a dict's values
        for m in typing.get_args(annotation)[1:]:
            metadata += list(getattr(m, "metadata", [m]))
    t = base_type(annotation)
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    optional = t is not base
    origin = typing.get_origin(t)
    if origin is Literal:
        text = "one of " + ", ".join(repr(o) for o in typing.get_args(t))
    elif t is bool:
        text = "true or false"
    elif t in (int, float):
        finite = any(getattr(m, "allow_inf_nan", None) is False for m in metadata)
        text = "an integer" if t is int else ("a finite number" if finite else "a number")
        bounds = []
        for m in metadata:
            for attr, sign in _BOUNDS:
                if getattr(m, attr, None) is not None:
                    v = getattr(m, attr)
                    bounds.append(f"{sign} {v}" if isinstance(v, int) else f"{sign} {v:g}")
        if bounds:
            text += " " + " and ".join(bounds)
    elif t is str:
        least = next((getattr(m, "min_length", None) for m in metadata if getattr(m, "min_length", None)), None)
        text = "a non-empty string" if least == 1 else f"a string of at least {least} characters" if least else "a string"
    elif origin in (tuple, list):
        items = [a for a in typing.get_args(t) if a is not Ellipsis]
        least = next((getattr(m, "min_length", None) for m in metadata if getattr(m, "min_length", None)), None)
        kind = {int: " of integers", str: " of strings"}.get(base_type(items[0]), "") if len(items) == 1 else ""
        text = ("a non-empty list" if least == 1 else f"a list of at least {least}" if least else "a list") + kind
    elif origin is dict or t is dict:
        text = "a table"
    elif _model_of(t) is not None:
        text = f"a table with the fields {', '.join(_model_of(t).model_fields)}"
    else:
        text = getattr(t, "__name__", str(t))
    return text + (" (or unset)" if optional and t is not type(None) else "")


def _walk(model: type[BaseModel], loc: tuple) -> tuple[FieldInfo | None, type[BaseModel] | None, Any]:
    """(field info, the model holding the last field, the annotation at ``loc``), following
    nested models, dict keys and tuple items; a ``[key]`` part gives the dict's key type."""
    current: Any = model
    info: FieldInfo | None = None
    holder: type[BaseModel] | None = model
    for i, part in enumerate(loc):
        m = _model_of(current)
        if m is not None:
            holder = m
            if not (isinstance(part, str) and part in m.model_fields):
                return None, m, current  # an unknown field of m
            info = m.model_fields[part]
            current = info.annotation
            continue
        t = base_type(current)
        info = None
        if typing.get_origin(t) is dict:
            key_type, value_type = typing.get_args(t)
            if i + 1 < len(loc) and loc[i + 1] == "[key]":
                return None, holder, key_type
            current = value_type
        elif typing.get_origin(t) in (tuple, list):
            args = [a for a in typing.get_args(t) if a is not Ellipsis]
            current = args[0] if len(args) == 1 else (args[part] if isinstance(part, int) and part < len(args)
                                                      else Any)
        else:
            return None, holder, current
    return info, holder, current


def describe(exc: ValidationError, model: type[BaseModel], source: str = "", prefix: str = "") -> str:
    """One line for the first error of ``exc``: the dotted field, the value, what is allowed."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    info, holder, annotation = _walk(model, loc)
    names = [str(p) for p in (loc[:-2] if loc and loc[-1] == "[key]" else loc)]
    dotted = ".".join([prefix, *names] if prefix else names)
    kind, value = err["type"], err.get("input")
    lead = f"{source}: " if source else ""
    if kind == "extra_forbidden":
        parent = ".".join([prefix, *names[:-1]] if prefix else names[:-1])
        fields = ", ".join(holder.model_fields) if holder is not None else ""
        return f"{lead}unknown field {dotted}; fields of [{parent or 'the top level'}]: {fields}"
    if kind == "missing":
        return f"{lead}{dotted} is required: {allowed_text(info, annotation)}"
    if kind in ("value_error", "assertion_error"):
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{lead}{dotted + ': ' if dotted and not msg.startswith(dotted) else ''}{msg}"
    shown = value.item() if hasattr(value, "item") else value
    if loc and loc[-1] == "[key]":
        return f"{lead}{dotted}: unknown key {loc[-2]!r}; allowed {allowed_text(None, annotation)}"
    what = "has the wrong type" if kind.endswith("_type") or kind in ("dict_type", "model_type") \
        else "is out of range"
    return f"{lead}{dotted} = {shown!r} {what}: allowed {allowed_text(info, annotation)}"
