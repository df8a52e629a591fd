"""The `train` and `plot` commands, registered on the main app by ``anglerank.cli``.

`anglerank train` has one option per field of :class:`anglerank.train.config.TrainConfig`;
the command's signature is generated from the dataclass so names, defaults and help
text cannot drift apart, and options shared with `score` reuse the aliases in
:mod:`anglerank.cli.common`. A flag given on the command line overrides the same key of
``--config run.toml``, which overrides the default.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from anglerank.cli import common as cc
from anglerank import settings
from anglerank.cli.common import curriculum_warnings, err, startup_over, user_errors
from anglerank.curriculum import parse_rank_value
from anglerank.errors import UserError
from anglerank.plots import plot_prompts, plot_runs
from anglerank.signals import abort_on_signal
from anglerank.train.config import SMOKE, UNIT_FIELDS, TrainConfig, build_config, in_panel_order
from anglerank.train.display import Display
from anglerank.train.lora import export_run
from anglerank.train.metrics import read_metrics
from anglerank.train.records import is_run_dir, prompt_figure_data, read_records

TRAIN_HELP = """Train a policy with GRPO on a GAIN-RL curriculum (or a uniform/ordered baseline).

Each epoch draws --subset-size prompts (gainrl: a Gaussian window over the ranking (--ranking, default angle), moved \
after the epoch by mu += clamp(n tanh(alpha (acc - beta_acc)) + n tanh(alpha angle), adj_min, adj_max)), trains on \
them in steps of --prompts-per-step prompts x --num-generations completions, then re-scores the prompts the window can \
reach next with the live weights (--rescore-every).

  anglerank train data/train.parquet --eval-data data/test.parquet -o runs/r1 --epochs 20

  anglerank train --config run.toml --lr 2e-6   (flags override the file)

  anglerank train data/train.parquet -o runs/smoke --smoke   (a quick check of the set-up: small and short)

  anglerank train --resume runs/r1 --epochs 40   (continue exactly)

  anglerank train data/train.parquet -o runs/lora --lora-r 16 --lora-alpha 32   \
(LoRA; anglerank export runs/lora -o merged/)

  anglerank train code_tasks.parquet -o runs/code --reward code   (coding: the row's 'tests', run in a sandbox)

  anglerank train data/train.parquet -o runs/r2 --report-to tensorboard --report-to wandb   (tracked, offline)

  anglerank train data/train.parquet -o runs/ctl --ranking random   (the control: same window, no signal)

Writes RUN_DIR/config.toml, metrics.jsonl, subsets.jsonl and checkpoints/step-N/ (loadable with from_pretrained). \
Ctrl-C saves a checkpoint. Plot with `anglerank plot RUN_DIR`.
"""


def _train_signature() -> inspect.Signature:
    K = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", K, annotation=typer.Context),
        inspect.Parameter("train_data", K, default=None, annotation=Annotated[Optional[list[str]], typer.Argument(
            help="Training Parquet files, directories or globs (optional with --config or --resume).",
            show_default=False)]),
    ]
    params += settings.parameters(TrainConfig, only=[f.name for f in in_panel_order() if f.metadata["cli"]],
                                  panels=True)
    run = "Run"
    params += [
        inspect.Parameter("config", K, default=None, annotation=Annotated[Optional[Path], typer.Option(
            "--config", help="TOML file with settings (keys as the option names, - or _); flags override it.",
            rich_help_panel=run)]),
        inspect.Parameter("resume", K, default=None, annotation=Annotated[Optional[Path], typer.Option(
            "--resume", help="Continue the run in this directory from its latest checkpoint, exactly. "
            "Only --epochs and run-time options may change.", rich_help_panel=run)]),
        inspect.Parameter("overwrite", K, default=False, annotation=Annotated[bool, typer.Option(
            "--overwrite", help="Replace a run already in --output.", rich_help_panel=run)]),
        inspect.Parameter("smoke", K, default=False, annotation=Annotated[bool, typer.Option(
            "--smoke", help="A quick check of the whole set-up: " + _smoke_help() + "; flags given override "
            "these (docs/train.md, \"Smoke runs and laptops\").", rich_help_panel=run)]),
        inspect.Parameter("force", K, default=False, annotation=Annotated[bool, typer.Option(
            "--force", help="With --resume: continue although the training or eval data changed since the run "
            "started (their fingerprints differ).", rich_help_panel=run)]),
        inspect.Parameter("quiet", K, default=False, annotation=cc.QuietOpt),
    ]
    return inspect.Signature(params)


def _smoke_help() -> str:
    return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items())


def _given(ctx: typer.Context, values: dict) -> dict:
    """Only the settings typed on the command line (so a TOML file is not overridden by defaults)."""
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for name, value in values.items():
        if name not in names or value is None:
            continue
        source = ctx.get_parameter_source(name)  # typer vendors click: compare by name
        if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        if name in UNIT_FIELDS:
            value = parse_rank_value(value)
        if isinstance(value, tuple):
            value = list(value)
        if name == "output_dir":
            value = str(value)
        out[name] = value
    return out


def train_cmd(ctx: typer.Context, **kw):
    from anglerank.train.checkpoint import resume_config
    from anglerank.train.loop import train

    given = _given(ctx, kw)
    if kw.get("train_data"):
        given["train_data"] = list(kw["train_data"])
    if kw["smoke"]:
        if kw["resume"] is not None:
            raise UserError("--smoke starts a new run; drop it with --resume")
        given = {**SMOKE, **given}
    if kw["resume"] is not None:
        if kw["config"] is not None:
            raise UserError("--resume uses the run's saved config.toml; drop --config")
        if "output_dir" in given and Path(given["output_dir"]).resolve() != kw["resume"].resolve():
            raise UserError("--resume RUN_DIR continues in RUN_DIR; drop --output")
        cfg = resume_config(kw["resume"], given)
    else:
        cfg = build_config(kw["config"], **given)
        if not cfg.train_data:
            raise UserError("give the training Parquet file(s) (or train_data in --config)")
        if not cfg.output_dir:
            raise UserError("--output RUN_DIR is required")
    if "trackio" in cfg.report_to:  # trackio's local database: in the run directory unless the user chose one
        os.environ.setdefault("TRACKIO_DIR", str(Path(cfg.output_dir).absolute() / "trackio"))
    display = Display(quiet=kw["quiet"], console=err)
    with display, curriculum_warnings():
        train(cfg, resume=kw["resume"] is not None, overwrite=kw["overwrite"], force=kw["force"],
              on_event=lambda kind, rec: (startup_over(), display(kind, rec)))


train_cmd.__signature__ = _train_signature()
train_cmd.__doc__ = TRAIN_HELP


def plot_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (several: curves overlaid).",
                                                    show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="PNG file. Default: RUN_DIR/curves.png (first run). The per-prompt figures go "
        "to RUN_DIR/prompts.png, or next to this file as NAME-prompts.png.")] = None,
):
    """Plot a run's curves (reward, accuracy, eval accuracy vs steps and time, window, angle) to a PNG, and its
    per-prompt records (accuracy by rank decile, data map, zero-variance groups) to RUN_DIR/prompts.png."""
    import warnings

    run_dirs = [Path(d) for d in run_dirs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [(d.name, read_metrics(d)) for d in run_dirs]
        out = [plot_runs(runs, output or run_dirs[0] / "curves.png"), *_plot_prompts_of_runs(run_dirs, output)]
    for w in caught:
        err.print(f"warning: {w.message}", soft_wrap=True)
    for path in out:
        err.print(f"wrote {path}")


def _plot_prompts_of_runs(run_dirs: list[Path], output: Path | None) -> list[Path]:
    """:func:`anglerank.plots.plot_prompts` for every run of ``run_dirs`` with per-prompt records and at least
    one step.

    Each goes to ``RUN_DIR/prompts.png``; with ``output`` (the curves' PNG) next to it as
    ``NAME-prompts.png`` (one run) or ``NAME-RUN-prompts.png`` (several).
    """
    out = []
    for d in run_dirs:
        if not is_run_dir(d):
            continue
        header, recs = read_records(d)
        if not recs:
            continue
        if output is None:
            path = d / "prompts.png"
        else:
            o = Path(output)
            path = o.with_name(f"{o.stem}{'-' + d.name if len(run_dirs) > 1 else ''}-prompts{o.suffix or '.png'}")
        out.append(plot_prompts(prompt_figure_data(header, recs), path, title=d.name))
    return out


def export_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory (its latest checkpoint) or one checkpoint folder.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the full weights and tokenizer.",
                                         show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output when it is a folder that is "
                                            "not empty (else refused).")] = False,
):
    """Write a checkpoint as full weights loadable with from_pretrained (a LoRA adapter merged into its base).

    The folder is built aside and renamed into place: an interrupted export leaves nothing half-written.
    """
    with abort_on_signal(f"interrupted; {output} was left as it was"):
        out = export_run(run, output, overwrite)
    err.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("train", help=TRAIN_HELP, no_args_is_help=True)(user_errors(train_cmd))
    app.command("plot")(user_errors(plot_cmd))
    app.command("export", no_args_is_help=True)(user_errors(export_cmd))
