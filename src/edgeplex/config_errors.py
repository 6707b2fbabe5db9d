"""Validation errors worded for people, not for pydantic.

A person who mistypes a config field should read what they wrote, what was expected and what was
given: `unknown field 'max_batch' (did you mean 'max_batch_size'?)`, `'max_batch_size' must be an
integer greater than or equal to 0, got 'eight'`, `'inputs[0].dims'` rather than `inputs.0.dims`.
This module turns a ValidationError into such problems; where they are (file:line, or the
environment variable) is added by whoever read the values.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one field: `says` is worded to follow the field's name."""

    loc: Loc
    says: str  # "must be an integer ...", or " (did you mean 'x'?)" after an unknown field
    given: str = ""  # the value given, as written back to the user ("" when it is not shown)
    unknown: bool = False  # a field the model does not have
    hint: str = ""  # " (did you mean 'run'?)" after the value given

    def worded(self, name: str, noun: str = "field", show_given: bool = True) -> str:
        """The problem as one sentence about `name` (the field as the user spelled it)."""
        if self.unknown:
            return f"unknown {noun} '{name}'{self.says}"
        got = (f", got {self.given}" if self.given and show_given else "") + self.hint
        if not name:
            return self.says + got
        joint = " " if self.says.startswith(("must ", "is ", "needs ", "may ")) else ": "
        return f"'{name}'{joint}{self.says}{got}"


def dotted(loc: Iterable[str | int]) -> str:
    """`('inputs', 0, 'dims')` -> `inputs[0].dims`: how a person points at a nested field."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def shown(value: object, limit: int = 60) -> str:
    """A value given, written back short: strings quoted, long ones cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, known: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """` (did you mean 'x'?)` for a mistyped name, else ""; `aliases` maps names users of other
    servers type (Triton's `input`) to the hint (`inputs`)."""
    hint = {key.lower(): value for key, value in (aliases or {}).items()}.get(name.lower())
    if hint is None:
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        if not close:
            close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
        hint = f"'{close[0]}'" if close else None
    return f" (did you mean {hint}?)" if hint else ""


def problems(
    exc: ValidationError,
    model: type[BaseModel],
    aliases: Mapping[type[BaseModel], Mapping[str, str]] | None = None,
    pattern_words: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Each error of `exc` (raised validating `model`) as a Problem worded for people.

    `aliases`, per model class, maps a name typed by habit to the hint for it; `pattern_words`
    says in words what a field's regex pattern allows."""
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        holder, field, annotation = _field_at(model, loc)
        found.append(_problem(err, loc, holder, field, annotation, (aliases or {}).get(holder or model, {}), pattern_words or {}))
    return found


def _problem(
    err: Any, loc: Loc, holder: type[BaseModel] | None, field: FieldInfo | None, annotation: Any,
    aliases: Mapping[str, str], pattern_words: Mapping[str, str],
) -> Problem:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    given = shown(value)
    if kind == "extra_forbidden":
        known = list(holder.model_fields) if holder is not None else []
        return Problem(loc, did_you_mean(str(loc[-1]), known, aliases), unknown=True)
    if kind == "missing":
        return Problem(loc, "is required")
    if kind == "value_error":  # the validators word their own messages, value included
        return Problem(loc, str(ctx.get("error", err["msg"])).removeprefix("Value error, "))
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return Problem(loc, "must be " + _BOUND_WORDS[kind].format(_number(ctx[_BOUND_KEYS[kind]])), given)
    if kind == "literal_error":
        choices = [c for c in get_args(field.annotation) if isinstance(c, str)] if field is not None else []
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        return Problem(loc, f"must be {ctx.get('expected', 'one of the choices')}", given, hint=hint)
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return Problem(loc, "must not be empty")
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return Problem(loc, pattern_words.get(pattern, f"must match the pattern {pattern}"), given)
    if kind == "string_type" and isinstance(value, (int, float, bool)):
        return Problem(loc, f"must be a string (quote it: \"{value}\")", given)
    expected = _expected(kind, field, annotation, loc)
    if expected is not None:
        return Problem(loc, f"must be {expected}", given)
    message = str(err["msg"]).replace("Input should be", "must be").replace("Value error, ", "")
    return Problem(loc, message[:1].lower() + message[1:], given)


_BOUND_KEYS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}
_BOUND_WORDS = {
    "greater_than_equal": "greater than or equal to {}", "greater_than": "greater than {}",
    "less_than_equal": "less than or equal to {}", "less_than": "less than {}",
}
_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "a boolean (true or false)",
    "bool_type": "a boolean (true or false)", "string_type": "a string", "path_type": "a path",
}


def _expected(kind: str, field: FieldInfo | None, annotation: Any, loc: Loc) -> str | None:
    """What a type error's field expected, in words, with the field's bounds when it has them."""
    if kind in _TYPE_WORDS:
        words = _TYPE_WORDS[kind]
        if field is not None and isinstance(loc[-1], str):  # the field itself, not one of its items
            words += _bounds(field)
        return words
    if kind == "list_type":
        item = get_args(_optional(annotation))
        return "a list" + (f" of {_plural(item[0])}" if item else "")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        annotation = _optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return f"a mapping with the fields {', '.join(annotation.model_fields)}"
        return "a mapping of names to values"
    return None


def _bounds(field: FieldInfo) -> str:
    """` from 1 to 64`, ` greater than or equal to 0`: the field's numeric bounds in words."""
    limits = {key: _number(getattr(meta, key)) for meta in field.metadata for key in _BOUND_KEYS.values()
              if getattr(meta, key, None) is not None}
    if "ge" in limits and "le" in limits:
        return f" from {limits['ge']} to {limits['le']}"
    keys = {value: key for key, value in _BOUND_KEYS.items()}
    parts = [_BOUND_WORDS[keys[key]].format(limit) for key, limit in limits.items()]
    return " " + " and ".join(parts) if parts else ""


def _number(value: Any) -> Any:
    """0.0 -> 0: a bound written as a person would."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _plural(item: Any) -> str:
    if isinstance(item, type) and issubclass(item, BaseModel):
        return f"mappings with the fields {', '.join(item.model_fields)}"
    return {int: "integers", float: "numbers", str: "strings"}.get(item, "values")


def _optional(annotation: Any) -> Any:
    """`X | None` -> X (other annotations unchanged)."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _field_at(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[type[BaseModel] | None, FieldInfo | None, Any]:
    """The model class that holds the last named field of `loc`, that field (None if unknown),
    and the type expected at `loc` itself (None if unknown)."""
    annotation: Any = model
    holder: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for part in loc:
        annotation = _optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            holder, field = annotation, annotation.model_fields.get(part)
            if field is None:
                return holder, None, None
            annotation = field.annotation
        elif get_origin(annotation) in (list, dict) and get_args(annotation):
            annotation = get_args(annotation)[-1]
        else:
            return holder, field, None
    return holder, field, annotation
