"""The `anglerank` command line: thin Typer commands over the library.

Human output goes to a stderr rich console, machine output (JSON) to stdout. User
mistakes end in one `error:` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anglerank.cli_common import (
    JsonOpt, LimitOpt, ModelOpt, OverwriteOpt, QuietOpt, ReadableHelpGroup, err, error_line, freeze_at_exit,
    pause_gc_for_startup, score_options, startup_over, user_errors, warning_line, with_settings,
)
from anglerank.errors import UserError
from anglerank.scoring.options import InputColumns, ScoreOptions

app = typer.Typer(
    cls=ReadableHelpGroup,
    help="GAIN-RL angle-concentration scoring and curricula for RL fine-tuning of LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from anglerank import __version__

        typer.echo(f"anglerank {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """GAIN-RL angle-concentration scoring and curricula for RL fine-tuning of LLMs."""


def _progress(quiet: bool):
    """A rich progress bar (rows, rows/s, tokens/s, ETA) as a callback plus its context."""
    from contextlib import nullcontext

    if quiet:
        return nullcontext(), lambda done, total, tokens: startup_over()
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )
    import time

    prog = Progress(
        TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, transient=False,
    )
    state = {"task": None, "t0": time.perf_counter(), "tok0": None, "row0": None}

    def cb(done: int, total: int, tokens: int):
        startup_over()
        if state["task"] is None:
            state["task"] = prog.add_task("score", total=total, completed=0, rate="")
            state["row0"], state["tok0"] = done, tokens
            state["t0"] = time.perf_counter()
            prog.update(state["task"], completed=done)
            return
        el = max(1e-9, time.perf_counter() - state["t0"])
        rate = f"{(done - state['row0']) / el:.1f} rows/s {(tokens - state['tok0']) / el:,.0f} tok/s"
        prog.update(state["task"], completed=done, rate=rate)

    return prog, cb


def _summary(manifest: dict, out: Path, title: str = "anglerank score") -> None:
    from anglerank.data.writer import load_scores

    t = load_scores(out)
    import pyarrow.compute as pc

    score = t.column("score")
    valid = pc.drop_null(score)
    tab = Table(title=title, show_header=False, title_justify="left")
    tab.add_row("output", str(out))
    tab.add_row("model", f"{manifest['model']} ({manifest['dtype']}, {manifest['device']})")
    tab.add_row("preset / site / layers", f"{manifest['preset']} / {manifest['site']} / {manifest['layers']}")
    tab.add_row("estimator", manifest["estimator"])
    tab.add_row("rows", f"{t.num_rows:,} ({len(valid):,} scored, {t.num_rows - len(valid):,} null)")
    if len(valid):
        q = pc.quantile(valid, q=[0.0, 0.5, 1.0]).to_pylist()
        tab.add_row("score mean ± std", f"{pc.mean(valid).as_py():.5f} ± {pc.stddev(valid).as_py() or 0:.5f}")
        tab.add_row("score min / median / max", f"{q[0]:.5f} / {q[1]:.5f} / {q[2]:.5f}")
    tab.add_row("truncated", f"{pc.sum(t.column('truncated')).as_py() or 0:,}")
    tab.add_row("time", f"{manifest.get('elapsed_s', 0):.1f} s, {manifest.get('tokens_per_s') or 0:,.0f} tokens/s")
    err.print(tab)


@app.command()
@user_errors
@with_settings(InputColumns, ScoreOptions, layers=True)
def score(
    inputs: Annotated[list[str], typer.Argument(help="Parquet, JSON Lines (.jsonl, .jsonl.gz), JSON or Arrow files, directories or globs of them, datasets save_to_disk folders, or hf://datasets/OWNER/NAME or hf://datasets/OWNER/NAME/PATH paths.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory for scores-*.arrow and manifest.json.")],
    limit: LimitOpt = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in OUTPUT from its last committed part (settings must match).")] = False,
    commit_every: Annotated[int, typer.Option("--commit-every", help="Commit a part every N rows (rounded down to a multiple of the read-ahead window of at most 256 rows); --resume restarts from the last part.")] = 4096,
    num_shards: Annotated[Optional[int], typer.Option("--num-shards", help="Split the rows into N contiguous shards (Slurm arrays, several machines on shared storage); this run scores one, into OUTPUT/shard-IIIII-of-NNNNN. Set automatically under torchrun.")] = None,
    shard_index: Annotated[Optional[int], typer.Option("--shard-index", help="Which shard (0-based) this invocation scores.")] = None,
    quiet: QuietOpt = False,
    **settings,
):
    """Score prompts by angle concentration and write per-row scores (Arrow IPC + manifest.json)."""
    from anglerank.scoring.distributed import distributed_env
    from anglerank.scoring.run import run_score

    opt = score_options(settings)
    prompt_column, id_column = settings["prompt_column"], settings["id_column"]
    if (num_shards is None) != (shard_index is None):
        raise UserError("--num-shards and --shard-index go together")

    dist_env = distributed_env() if num_shards is None else None
    rank0 = dist_env is None or dist_env[0] == 0
    ctx, cb = _progress(quiet or not rank0)
    with ctx:
        run_score(
            inputs, output, options=opt, prompt_column=prompt_column, id_column=id_column, limit=limit,
            overwrite=overwrite, resume=resume, commit_every=commit_every, progress=cb,
            num_shards=num_shards, shard_index=shard_index,
            warn=lambda m: err.print(f"[yellow]warning:[/] {escape(m)}", highlight=False, soft_wrap=True),
        )
    if dist_env is not None:
        _merge_after_torchrun(output, rank0, overwrite or resume)
    elif num_shards is not None:
        if not quiet:
            err.print(f"shard {shard_index} of {num_shards} done; when all shards are done run "
                      f"`anglerank merge {output}`", highlight=False)
        return
    if not quiet and rank0:
        from anglerank.data.writer import read_manifest

        _summary(read_manifest(output), output)
    if rank0:
        _warn_if_mostly_null(output)


def _warn_if_mostly_null(output: Path) -> None:
    """A finished run whose scores are mostly null exits 0 like any other: say so, and why."""
    from anglerank.curation.inspect import null_warning
    from anglerank.data.writer import load_scores

    msg = null_warning(load_scores(output), output)
    if msg:
        warning_line(msg)


def _merge_after_torchrun(output: Path, rank0: bool, overwrite: bool) -> None:
    """Wait for every rank (gloo barrier, no GPU collectives needed), then rank 0 merges."""
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=72))
    try:
        dist.barrier()
        if rank0:
            from anglerank.scoring.distributed import merge

            merge(output, overwrite=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@app.command("merge")
@user_errors
def merge_cmd(
    output: Annotated[Path, typer.Argument(help="The --output directory of a sharded `anglerank score` run.")],
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
):
    """Check that every shard finished and covers every row exactly once, then write the merged scores."""
    from anglerank.scoring.distributed import merge

    m = merge(output, overwrite=overwrite)
    if not quiet:
        _summary(m, output, title="anglerank merge")
    _warn_if_mostly_null(output)


@app.command()
@user_errors
def info(model: ModelOpt = None, json_out: JsonOpt = False):
    """Show the resolved model folder, architecture, layers, hidden size, chat template and hook sites."""
    from anglerank import hooks, models

    path = models.resolve_model_path(model)
    d = {"model": model or models.DEFAULT_MODEL, "path": str(path), **models.describe(path)}
    try:
        import torch
        from transformers import AutoModelForCausalLM

        cfg = models.load_config(path)  # one line for configs it cannot read (custom model code)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(cfg)
        d["hook_sites"] = hooks.hook_sites(skeleton)
        d["num_layers"] = len(hooks.decoder_layers(skeleton))
    except hooks.HookError as exc:
        d["hook_sites"] = []
        d["hook_error"] = str(exc)
    if json_out:
        typer.echo(json.dumps(d, indent=2))
        return
    tab = Table(show_header=False, title=f"anglerank info: {d['model']}", title_justify="left")
    for k in ("path", "architecture", "num_layers", "hidden_size", "chat_template", "hook_sites"):
        v = d.get(k)
        tab.add_row(k, ", ".join(v) if isinstance(v, list) else str(v))
    Console().print(tab)


# Other command groups live in their own modules and register themselves here.
from anglerank import cli_rank, cli_train, cli_validate  # noqa: E402
for _module in (cli_validate, cli_rank, cli_train):
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


if __name__ == "__main__":
    main()
