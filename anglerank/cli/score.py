"""The `score`, `merge` and `info` commands, registered on the main app by ``anglerank.cli``.

Human output goes to the stderr console, ``--json`` output to stdout; user mistakes end
in one ``error:`` line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from anglerank.cli.common import (
    JsonOpt, LimitOpt, ModelOpt, OverwriteOpt, QuietOpt, err, score_options, startup_over, user_errors,
    warning_line, with_settings,
)
from anglerank.errors import UserError
from anglerank.scoring.options import InputColumns, ScoreOptions


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


@with_settings(InputColumns, ScoreOptions, layers=True)
def score(
    inputs: Annotated[list[str], typer.Argument(
        help="Parquet, JSON Lines (.jsonl, .jsonl.gz), JSON or Arrow files, directories or globs of them, datasets "
        "save_to_disk folders, or hf://datasets/OWNER/NAME or hf://datasets/OWNER/NAME/PATH paths.",
        show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output directory for scores-*.arrow and manifest.json.")],
    limit: LimitOpt = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run in OUTPUT from its last committed part (settings must "
        "match).")] = False,
    commit_every: Annotated[int, typer.Option(
        "--commit-every", help="Commit a part every N rows (rounded down to a multiple of the read-ahead window of at "
        "most 256 rows); --resume restarts from the last part.")] = 4096,
    num_shards: Annotated[Optional[int], typer.Option(
        "--num-shards", help="Split the rows into N contiguous shards (Slurm arrays, several machines on shared "
        "storage); this run scores one, into OUTPUT/shard-IIIII-of-NNNNN. Set automatically under torchrun.")] = None,
    shard_index: Annotated[Optional[int], typer.Option(
        "--shard-index", help="Which shard (0-based) this invocation scores.")] = None,
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
            warn=warning_line,
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


def info(model: ModelOpt = None, json_out: JsonOpt = False):
    """Show the resolved model folder, architecture, layers, hidden size, chat template and hook sites."""
    from anglerank.model import hooks, loading

    path = loading.resolve_model_path(model)
    d = {"model": model or loading.DEFAULT_MODEL, "path": str(path), **loading.describe(path)}
    try:
        import torch
        from transformers import AutoModelForCausalLM

        cfg = loading.load_config(path)  # one line for configs it cannot read (custom model code)
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


def register(app: typer.Typer) -> None:
    app.command("score")(user_errors(score))
    app.command("merge")(user_errors(merge_cmd))
    app.command("info")(user_errors(info))
