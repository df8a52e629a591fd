"""One definition per setting: a dataclass field that carries its help, flags, valid range and choices.

Every option of every command is declared once, as a field made by :func:`setting` on the dataclass
that uses it (:class:`anglerank.scoring.options.ScoreOptions`, :class:`anglerank.curriculum.CurriculumConfig`,
:class:`anglerank.train.config.TrainConfig`, ...). Everything else is derived from the fields:

- :func:`check`: every value against its declared range and choices, one ``--flag must be ...`` error;
- :func:`parameters`: the command-line options of a command (Typer), names, defaults and help included;
- :func:`result_keys`: the settings that change results, which a manifest records and ``--resume`` checks.

No torch here: ``--help`` and the checks run without it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Annotated, Any, Callable, Optional

from anglerank.errors import UserError

__all__ = ["setting", "override", "check", "option", "parameters", "values", "result_keys", "flag", "base_type",
           "field_of"]


def setting(default=MISSING, help: str = "", *, factory: Callable | None = None, flags: tuple | None = None,
            panel: str | None = None, valid: str | None = None, choices=None, result: bool = False,
            cli: bool = True, parse: Callable | None = None, cli_type=None, metavar: str | None = None,
            resume: bool = False) -> Field:
    """A dataclass field with what every consumer needs to know about it.

    ``valid``: the range of a number (">= 1", "> 0", "[0, 1)", "(0, 1]", or "any": any finite number).
    ``choices``: the allowed values, or a function returning them (a registry's names, read when checked).
    ``result``: the value changes the numbers a run produces, so it is recorded and checked on ``--resume``.
    ``parse`` / ``cli_type``: how a command-line string becomes the value (e.g. rank units), and its type there.
    ``cli``: False for a setting with no option of its own (given as an argument, or derived).
    ``resume``: a resumed training run may change it (it does not change what was trained so far).
    """
    meta = {"help": help, "flags": flags, "panel": panel, "valid": valid, "choices": choices, "result": result,
            "cli": cli, "parse": parse, "cli_type": cli_type, "metavar": metavar, "resume": resume}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def override(cls, name: str, **changes) -> Field:
    """The field ``name`` of ``cls`` with another default or help (or other metadata), for a subclass whose
    command means something narrower by it; everything not changed stays declared in one place."""
    f = field_of(cls, name)
    meta = {**f.metadata, **{k: v for k, v in changes.items() if k != "default"}}
    default = changes.get("default", f.default)
    if default is MISSING and f.default_factory is not MISSING:
        return field(default_factory=f.default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_of(cls, name: str) -> Field:
    return next(f for f in fields(cls) if f.name == name)


def flag(f: Field) -> str:
    """The field's main command-line flag, as error messages name it."""
    flags = f.metadata.get("flags")
    return flags[0] if flags else "--" + f.name.replace("_", "-")


def base_type(tp) -> type:
    """The non-None type of a field annotation (``str | None`` -> str, ``list | None`` -> list)."""
    if isinstance(tp, str):
        tp = eval(tp, {"list": list, "str": str, "int": int, "float": float, "bool": bool, "dict": dict})  # noqa: S307
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def result_keys(cls) -> tuple:
    """The settings of ``cls`` that change the numbers a run produces (checked on ``--resume``)."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("result"))


def choices_of(f: Field) -> tuple | None:
    c = f.metadata.get("choices")
    return tuple(c() if callable(c) else c) if c is not None else None


# --- checks ---------------------------------------------------------------------------------------

def check(obj) -> None:
    """Every field of ``obj`` against its declared range and choices: one error naming the option."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        allowed = choices_of(f)
        if allowed is not None and value is not None and value not in allowed:
            raise UserError(f"unknown {flag(f)} {value!r}; choose from {', '.join(map(str, allowed))}")
        valid = f.metadata.get("valid")
        if valid is None:
            continue
        integer = base_type(f.type) is int
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None:  # an unset optional setting
                continue
            if (isinstance(v, bool) or not isinstance(v, int if integer else numbers.Real)
                    or not math.isfinite(v) or not _within(v, valid)):
                raise UserError(f"{flag(f)} must be {_describe(valid, integer)}, got {v!r}")


def _within(v, valid: str) -> bool:
    if valid == "any":
        return True
    if valid[0] in "[(":
        lo, hi = (_number(x) for x in valid[1:-1].split(","))
        return (lo <= v if valid[0] == "[" else lo < v) and (v <= hi if valid[-1] == "]" else v < hi)
    op, bound = valid.split()
    return v >= _number(bound) if op == ">=" else v > _number(bound)


def _number(text: str):
    base, _, power = text.strip().partition("**")
    return int(base) ** int(power) if power else float(base)


def _describe(valid: str, integer: bool) -> str:
    if integer and valid in (">= 0", ">= 1"):
        return "a positive integer" if valid == ">= 1" else "a non-negative integer"
    kind = "an integer" if integer else "a finite number"
    return kind if valid == "any" else f"{kind} in {valid}" if valid[0] in "[(" else f"{kind} {valid}"


# --- the command line -----------------------------------------------------------------------------

def parameters(cls, *, only=None, skip=(), panels: bool = False) -> list[inspect.Parameter]:
    """Typer options (keyword-only parameters) for the fields of ``cls``: ``only`` these names (in this order)
    or every field with an option but ``skip``; with ``panels``, grouped under each field's help panel."""
    by_name = {f.name: f for f in fields(cls)}
    chosen = [by_name[n] for n in only] if only is not None else [
        f for f in fields(cls) if f.metadata.get("cli", True) and "help" in f.metadata]
    chosen = [f for f in chosen if f.name not in skip]
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_cli_default(f),
                              annotation=_annotation(f, panels)) for f in chosen]


def option(cls, name: str, *, panels: bool = False):
    """The Typer option type (``Annotated[...]``) of one field, for a command that declares it by hand."""
    return _annotation(field_of(cls, name), panels)


def _cli_default(f: Field):
    # a value parsed from text (rank units) has no exact text form: unset on the command line is the default
    return None if f.default is MISSING or f.metadata.get("parse") is not None else f.default


def _annotation(f: Field, panels: bool):
    import typer

    flags = list(f.metadata.get("flags") or ["--" + f.name.replace("_", "-")])
    base, tp = base_type(f.type), f.metadata.get("cli_type")
    if tp is None:
        if base is bool:
            flags = [f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:]]
            tp = bool
        elif base is list:
            tp = Optional[list[str]]
        else:
            tp = Optional[base] if f.default is None or f.default is MISSING else base
    help = f.metadata["help"]
    if f.metadata.get("parse") is not None:
        tp = Optional[tp]
        if f.default not in (MISSING, None):
            help += f" Default: {f.default:.4g}."
    extra = {"rich_help_panel": f.metadata.get("panel")} if panels else {}
    if f.metadata.get("metavar"):
        extra["metavar"] = f.metadata["metavar"]
    return Annotated[tp, typer.Option(*flags, help=help, **extra)]


def values(cls, params: dict) -> dict[str, Any]:
    """The keyword arguments for ``cls`` among a command's parameters (its ``locals()``), parsed from their
    command-line form; a field the command does not offer keeps its default."""
    out = {}
    for f in fields(cls):
        if f.name not in params:
            continue
        value, parse = params[f.name], f.metadata.get("parse")
        if parse is not None and value is None:  # not given: the field's default
            continue
        out[f.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return out
