"""Shared pieces of the command line: option definitions used by several commands,
the stderr console, and the mapping of user errors to one-line messages (exit 2).

Every repeated option is defined once here so names, defaults and help stay
consistent across `score`, `validate`, `train`, `rank` and the rest.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from typing import Annotated, Optional

import typer
from rich.console import Console

from anglerank.errors import Interrupted, UserError
from anglerank.scoring import estimators

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

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hugging Face id (hub cache, or network when online) or local folder. "
    "Default: the embedded SmolLM2-135M-Instruct.")]
PromptColumnOpt = Annotated[Optional[str], typer.Option(
    "--prompt-column", help="Column with the question: a string or a list of {role, content} messages; "
    "dotted paths reach into structs (extra_info.question). Default: auto-detect prompt, question, problem, text.")]
IdColumnOpt = Annotated[Optional[str], typer.Option(
    "--id-column", help="Column copied to the output `id`: integer or string values (another type is refused). "
    "Default: the first of extra_info.index, id or index that holds integers or strings; a candidate of another "
    "type (e.g. double) is skipped with a warning.")]
PresetOpt = Annotated[str, typer.Option(
    "--preset", help="none: the row's messages through the chat template; gainrl: the authors' four-message prompt around the question.")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="Set or replace the system message.")]
PrefixOpt = Annotated[Optional[str], typer.Option(
    "--prefix", help="Plain-text mode (no chat template): score PREFIX + question; the prefix is segment P.")]
SiteOpt = Annotated[str, typer.Option(
    "--site", help="Hook site: mlp-input (the MLP input of layer k, i.e. post-attention norm output; the authors' site) or residual (decoder layer output).")]
LayerOpt = Annotated[Optional[list[int]], typer.Option(
    "--layer", help="Decoder layer to hook; negative counts from the end. Repeat for several layers. Default -1.")]
LayersOpt = Annotated[Optional[str], typer.Option(
    "--layers", help="Several layers at once: 'all' or a Python-style range 'A:B' (e.g. 10:30). One forward pass serves all.")]


def _estimator_help() -> str:
    """--estimator's help, one clause per registered estimator."""
    return "; ".join(f"{n}: {estimators.get(n).help}" for n in estimators.names()) + "."


def _w_inter_help() -> str:
    defaults = [f"{estimators.get(n).default_w_inter:g} ({n})" for n in estimators.names()]
    listed = f"{', '.join(defaults[:-1])} or {defaults[-1]}" if len(defaults) > 1 else defaults[0]
    return f"Weight of C_inter in score. Default {listed}."


EstimatorOpt = Annotated[str, typer.Option("--estimator", help=_estimator_help())]
WIntraOpt = Annotated[float, typer.Option("--w-intra", help="Weight of C_intra in score.")]
WInterOpt = Annotated[Optional[float], typer.Option("--w-inter", help=_w_inter_help())]
CodePrefixOpt = Annotated[int, typer.Option("--code-prefix-tokens", help="gainrl-code: fixed prefix length in tokens (authors: 110).")]
CodeSuffixOpt = Annotated[int, typer.Option("--code-suffix-tokens", help="gainrl-code: fixed suffix length in tokens (authors: 6).")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", help="Longer prompts are truncated at the end and flagged `truncated`.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto|bfloat16|float16|float32. auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else float32.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N.")]
BatchTokensOpt = Annotated[Optional[int], typer.Option("--batch-tokens", help="Token budget per forward batch, padding included. Default: on CUDA, what the free GPU memory holds for this model's shape (docs/gpu.md); on CPUs 4096 with AMX, else 1024 (small batches stay in cache); recorded in the manifest with its reasons, and a --resume keeps it. A batch that runs out of GPU memory is split and the budget halved (recorded as batch_tokens_backoff). A cached shared prefix counts for every row (each row attends to its keys/values).")]
DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="Spread the model's layers over several devices (accelerate): auto (every visible GPU; under torchrun each rank takes its share), balanced, sequential, or an explicit map of module name -> device as inline JSON or a JSON file, e.g. '{\"model.embed_tokens\": 0, \"model.layers.0\": 0, \"model.layers.1\": 1}'. Only the layers up to the deepest hooked one are loaded either way.")]
PrefixCacheOpt = Annotated[bool, typer.Option("--prefix-cache/--no-prefix-cache", help="Run a token prefix that rows share (system prompt, few-shot turns, template header) once and reuse its key/value cache, so only each row's own tokens run: the same scores up to rounding, about 2x faster with --preset gainrl. Used for Llama, Qwen2/3, Mistral, Gemma2, GPT-2 and GPT-NeoX models.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Only the first N rows (quick runs).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DataOpt = Annotated[Optional[list[str]], typer.Option("--data", help="The input(s) that were scored (files, directories or globs), in the same order. rank and sample default to the files recorded in the score directory's manifest.")]
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


def score_options(params: dict):
    """ScoreOptions from a command's parameters (its ``locals()``), so every command that scores
    (score, validate) maps the shared scoring options in this one place."""
    from dataclasses import fields

    from anglerank.scoring.engine import ScoreOptions

    names = [f.name for f in fields(ScoreOptions) if f.name != "layers"]
    # an option a command does not offer (validate has no --device-map) keeps its default
    return ScoreOptions(layers=layers_arg(params["layer"], params["layers"]),
                        **{k: params[k] for k in names if k in params})




def warning_line(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def curriculum_warnings():
    """Show the curriculum's warnings (a subset size that covers every row) as one ``warning:`` line each,
    when they happen; every other warning is shown as before."""
    import warnings

    from anglerank.curriculum import CurriculumWarning

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
