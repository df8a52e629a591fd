"""Shared pieces of the command line: option definitions used by several commands,
the stderr console, and the mapping of user errors to one-line messages (exit 2).

Every repeated option is defined once here so names, defaults and help stay
consistent across `score`, `validate`, `train`, `rank` and the rest.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import typing
from typing import Annotated, Optional

import typer
from rich.console import Console

from anglerank.curriculum import CurriculumWarning
from anglerank.errors import Interrupted, UserError
from anglerank.scoring.options import ModelSettings, ScoreOptions
from anglerank.settings import option, parameters, values

err = Console(stderr=True)


# --- the garbage collector around start-up ---------------------------------------------------
# Start-up (torch, transformers, the model) leaves ~400k long-lived objects, and each full
# collection rescans them all: 7 full collections cost 0.9 s of a one-row `score`, and the
# interpreter's collections at exit another 1.0 s (measured, README "Start-up"). So the entry
# point pauses the collector, and the first progress report of a command that loads a model
# freezes what start-up built (later collections skip it) and resumes collecting.

def pause_gc_for_startup() -> None:
    gc.disable()


def startup_over() -> None:
    """Start-up is over (the model is loaded, work begins): freeze its objects, collect again."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def freeze_at_exit() -> None:
    """Nothing is left to collect at exit that matters; freezing spares the final full collections."""
    gc.freeze()


# --- shared option definitions (one per repeated option) ---------------------------------

ModelOpt = option(ModelSettings, "model")
LayerOpt = Annotated[Optional[list[int]], typer.Option(
    "--layer", help="Decoder layer to hook; negative counts from the end. Repeat for several layers. Default -1.")]
LayersOpt = Annotated[Optional[str], typer.Option(
    "--layers", help="Several layers at once: 'all' or a Python-style range 'A:B' (e.g. 10:30). One forward pass "
    "serves all.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Only the first N rows (quick runs).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DataOpt = Annotated[Optional[list[str]], typer.Option(
    "--data", help="The input(s) that were scored (files, directories or globs), in the same order. rank and sample "
    "default to the files recorded in the score directory's manifest.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output instead of refusing.")]


def error_line(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def fail(msg: str, code: int = 2):
    error_line(msg)
    raise typer.Exit(code)


def user_errors(fn):
    """Map a command's exceptions to what the user sees.

    A :class:`anglerank.errors.UserError` (bad input, option or environment) is one
    ``error:`` line and exit 2; an interrupted run prints how to resume and exits
    130 / 143; an OS error (disk full, permission) is one line and exit 1. Anything
    else is a bug: one line saying it is an internal error, exit 1, and the full
    traceback with ``ANGLERANK_DEBUG=1``.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except Interrupted as exc:
            err.print(f"[yellow]{exc}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.code)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except OSError as exc:
            fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", 1)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: say so, keep the traceback one variable away
            if os.environ.get("ANGLERANK_DEBUG"):
                raise
            fail(f"internal error (a bug in anglerank): {type(exc).__name__}: {exc} "
                 "(run again with ANGLERANK_DEBUG=1 for the traceback)", 1)

    return wrapper


def layers_arg(layer: list[int] | None, layers: str | None) -> list:
    if layer and layers:
        raise UserError("use either --layer or --layers, not both")
    if layers:
        return [layers]
    return list(layer) if layer else [-1]


def score_options(params: dict) -> ScoreOptions:
    """ScoreOptions from a command's settings; an option a command does not offer keeps its default."""
    given = {k: v for k, v in params.items() if k not in ("layer", "layers")}  # --layers is a string here
    return ScoreOptions(layers=layers_arg(params.get("layer"), params.get("layers")), **values(ScoreOptions, given))


def with_settings(*groups, skip=(), layers: bool = False):
    """Give a command one option per field of the settings dataclasses ``groups`` (their help, flags and
    defaults; a group may be ``(class, [names])``), after its own parameters; the command receives them as
    its ``**settings``. ``layers`` adds the command-line form of ScoreOptions.layers (--layer / --layers)."""
    def wrap(fn):
        hints = typing.get_type_hints(fn, include_extras=True)  # the command's own options, resolved
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        generated, seen = [], {p.name for p in own} | set(skip)
        for group in groups:  # a settings class, or (class, [field names])
            cls, only = group if isinstance(group, tuple) else (group, None)
            for p in parameters(cls, only=only, skip=seen):
                generated.append(p)
                seen.add(p.name)
        if layers:
            generated += [inspect.Parameter("layer", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=LayerOpt),
                          inspect.Parameter("layers", inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=LayersOpt)]
        names = {p.name for p in generated}

        @functools.wraps(fn)
        def command(**kw):
            return fn(**{k: v for k, v in kw.items() if k not in names}, **{k: kw[k] for k in names})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command
    return wrap


def warning_line(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def curriculum_warnings():
    """Show the curriculum's warnings (a subset size that covers every row) as one ``warning:`` line each,
    when they happen; every other warning is shown as before."""
    import warnings

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CurriculumWarning):
                warning_line(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", CurriculumWarning)
        yield


# Below this width rich's option tables squeeze the option names ("--code-prefix-t…"); click's plain
# two-column help wraps the descriptions instead and keeps every name whole.
RICH_HELP_MIN_COLUMNS = 120


class ReadableHelpGroup(typer.core.TyperGroup):
    """The command group of the app: before it runs, its command tree gets :func:`readable_help`."""

    def main(self, *args, **kwargs):
        readable_help(self)
        return super().main(*args, **kwargs)


def readable_help(command) -> None:
    """Tidy the click command tree built from the Typer app: flags (--help too) show no ``<bool>`` type,
    and where rich would draw the help narrower than RICH_HELP_MIN_COLUMNS (a terminal, or COLUMNS when
    the output is not one) ``--help`` is click's plain layout."""
    narrow = Console().width < RICH_HELP_MIN_COLUMNS
    todo = [command]
    while todo:
        c = todo.pop()
        todo.extend(getattr(c, "commands", {}).values())
        if narrow and hasattr(c, "rich_markup_mode"):
            c.rich_markup_mode = None
        flags = [p for p in c.params if getattr(p, "is_flag", False)]
        flags.append(c.get_help_option(c.context_class(c)))  # created once per command, then reused
        for p in flags:
            if p is not None and p.metavar is None:
                p.metavar = ""
