"""The `anglerank` command line: thin Typer commands over the library.

Human output goes to a stderr rich console, machine output (JSON) to stdout. User
mistakes end in one `error:` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from anglerank import __version__
from anglerank.cli import rank, score, train, validate
from anglerank.cli.common import ReadableHelpGroup, err, error_line, freeze_at_exit, pause_gc_for_startup

app = typer.Typer(
    cls=ReadableHelpGroup,
    help="GAIN-RL angle-concentration scoring and curricula for RL fine-tuning of LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"anglerank {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """GAIN-RL angle-concentration scoring and curricula for RL fine-tuning of LLMs."""


# Every command lives in a module of this package and registers itself here, in the order --help lists them.
for _module in (score, validate, rank, train):
    _module.register(app)


def _tune_allocator() -> None:
    """Keep the heap from creeping on long runs (glibc only).

    Capping glibc's arenas limits fragmentation from batches of varying shapes. (A low
    mmap threshold flattened memory further but halved CPU throughput: every large
    activation became an mmap/munmap with fresh page faults.)
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


# Commands that load a model: their start-up (torch, transformers, the weights) leaves ~400k long-lived
# objects, and collecting them over and over during it costs seconds; the others never pause the collector.
MODEL_COMMANDS = frozenset({"score", "validate", "passrate", "train"})


def main():
    """The `anglerank` entry point: command-line mistakes end in one error line too."""
    try:
        from typer._click import exceptions as cx  # typer >= 0.24 vendors click
    except ImportError:
        from click import exceptions as cx

    _tune_allocator()
    if len(sys.argv) > 1 and sys.argv[1] in MODEL_COMMANDS:  # their first progress report turns it back on
        pause_gc_for_startup()
    try:
        code = app(standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        err.print(exc.format_message())
        sys.exit(2)
    except cx.UsageError as exc:  # a malformed command line (unknown option, bad value, missing argument)
        hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx else ""
        error_line(f"{exc.format_message().rstrip('.')}{hint}")
        sys.exit(2)
    except typer.Abort:  # typer >= 0.29 keeps Abort out of its vendored click
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except cx.ClickException as exc:
        error_line(exc.format_message())
        sys.exit(exc.exit_code)
    finally:
        freeze_at_exit()
    sys.exit(code if isinstance(code, int) else 0)

