"""The `train` and `plot` commands, registered on the main app by ``anglerank.cli``.

`anglerank train` has one option per field of :class:`anglerank.train.config.TrainConfig`;
the command's signature is generated from the dataclass so names, defaults and help
text cannot drift apart, and options shared with `score` reuse the aliases in
``cli_common``. A flag given on the command line overrides the same key of
``--config run.toml``, which overrides the default.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from anglerank import cli_common as cc
from anglerank.cli_common import err, user_errors
from anglerank.train.config import RANK_FIELDS, TrainConfig, _base_type

# Options shared with `score` (same flag names and help).
_SHARED = {"model": cc.ModelOpt, "prompt_column": cc.PromptColumnOpt, "id_column": cc.IdColumnOpt,
           "preset": cc.PresetOpt, "system": cc.SystemOpt, "prefix": cc.PrefixOpt, "site": cc.SiteOpt,
           "dtype": cc.DtypeOpt, "device": cc.DeviceOpt, "seed": cc.SeedOpt, "estimator": cc.EstimatorOpt}
_SHORT = {"output_dir": ["--output", "-o"]}

TRAIN_HELP = """Train a policy with GRPO on a GAIN-RL curriculum (or a uniform/ordered baseline).

Each epoch draws --subset-size prompts (gainrl: a Gaussian window over the angle ranking, moved after the epoch by mu += clamp(n tanh(alpha (acc - beta_acc)) + n tanh(alpha angle), adj_min, adj_max)), trains on them in steps of --prompts-per-step prompts x --num-generations completions, then re-scores every prompt with the live weights.

  anglerank train data/train.parquet --eval-data data/test.parquet -o runs/r1 --epochs 20

  anglerank train --config run.toml --lr 2e-6   (flags override the file)

  anglerank train --resume runs/r1 --epochs 40   (continue exactly)

Writes RUN_DIR/config.toml, metrics.jsonl, subsets.jsonl and checkpoints/step-N/ (loadable with from_pretrained). Ctrl-C saves a checkpoint. Plot with `anglerank plot RUN_DIR`.
"""


def _option_annotation(f):
    """Annotated[type, typer.Option(...)] for one config field."""
    panel = f.metadata["panel"]
    base = _base_type(f.type)
    if f.name in _SHARED:
        alias = _SHARED[f.name]
        tp, info = alias.__origin__, copy.copy(alias.__metadata__[0])
        info.rich_help_panel = panel
        return Annotated[tp, info]
    flags = _SHORT.get(f.name, ["--" + f.name.replace("_", "-")])
    help_text = f.metadata["help"]
    if f.name in RANK_FIELDS:
        tp = str
        help_text += " Ranks (an integer) or a fraction of N (0 < x <= 1)."
    elif base is list:
        tp = Optional[list[float]] if f.name == "reward_weight" else Optional[list[str]]
        if f.name == "reward":
            help_text += " Default: math."
    elif base is bool:
        flags = [f"{flags[0]}/--no-{flags[0][2:]}"]
        tp = bool
    else:
        tp = Optional[base] if f.default is None else base
    return Annotated[tp, typer.Option(*flags, help=help_text, rich_help_panel=panel)]


def _default(f):
    if f.name in RANK_FIELDS:
        return str(round(f.default, 4)) if isinstance(f.default, float) else str(f.default)
    if f.default is MISSING:  # list fields with factories
        return None
    return f.default


def _train_signature() -> inspect.Signature:
    K = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", K, annotation=typer.Context),
        inspect.Parameter("train_data", K, default=None, annotation=Annotated[Optional[list[str]], typer.Argument(
            help="Training Parquet files, directories or globs (optional with --config or --resume).",
            show_default=False)]),
    ]
    for f in fields(TrainConfig):
        if f.metadata["cli"]:
            params.append(inspect.Parameter(f.name, K, default=_default(f), annotation=_option_annotation(f)))
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
        inspect.Parameter("quiet", K, default=False, annotation=cc.QuietOpt),
    ]
    return inspect.Signature(params)


def _given(ctx: typer.Context, values: dict) -> dict:
    """Only the settings typed on the command line (so a TOML file is not overridden by defaults)."""
    from anglerank.rank import parse_rank_value

    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for name, value in values.items():
        if name not in names or value is None:
            continue
        source = ctx.get_parameter_source(name)  # typer vendors click: compare by name
        if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        if name in RANK_FIELDS:
            value = parse_rank_value(value)
        if isinstance(value, tuple):
            value = list(value)
        if name == "output_dir":
            value = str(value)
        out[name] = value
    return out


def train_cmd(ctx: typer.Context, **kw):
    from anglerank.train.config import build_config
    from anglerank.train.loop import resume_config, train

    given = _given(ctx, kw)
    if kw.get("train_data"):
        given["train_data"] = list(kw["train_data"])
    if kw["resume"] is not None:
        if kw["config"] is not None:
            raise ValueError("--resume uses the run's saved config.toml; drop --config")
        if "output_dir" in given and Path(given["output_dir"]).resolve() != kw["resume"].resolve():
            raise ValueError("--resume RUN_DIR continues in RUN_DIR; drop --output")
        cfg = resume_config(kw["resume"], given)
    else:
        cfg = build_config(kw["config"], **given)
        if not cfg.train_data:
            raise ValueError("give the training Parquet file(s) (or train_data in --config)")
        if not cfg.output_dir:
            raise ValueError("--output RUN_DIR is required")
    display = _Display(quiet=kw["quiet"])
    with display:
        train(cfg, resume=kw["resume"] is not None, overwrite=kw["overwrite"], on_event=display)


train_cmd.__signature__ = _train_signature()
train_cmd.__doc__ = TRAIN_HELP


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


class _Display:
    """Live rich view: a progress bar over steps with the latest step metrics, one line per epoch."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.prog = None
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.stop()
            self.prog = None

    def __call__(self, kind: str, rec: dict):
        if self.quiet:
            return
        if kind == "start":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in rec["dropped"].items() if v)
            err.print(f"[bold]anglerank train[/] {rec['run_dir']}: {rec['model']} ({rec['dtype']}, {rec['device']}), "
                      f"{rec['n_prompts']:,} prompts" + (f" ({dropped} left out)" if dropped else "") +
                      (f", {rec['n_eval']:,} eval" if rec["n_eval"] else "") +
                      f", {rec['epochs']} epochs x {rec['steps_per_epoch']} steps", highlight=False)
            self.prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=err)
            self.prog.start()
            self.task = self.prog.add_task("train", total=rec["total_steps"], completed=rec["global_step"], info="")
        elif kind == "step" and self.prog:
            info = (f"ep {rec['epoch']} loss {rec['loss']:+.4f} reward {rec['reward_mean']:.3f} "
                    f"acc {rec['accuracy']:.2f} kl {rec['kl']:.4f} len {rec['completion_len_mean']:.0f} "
                    f"{rec['tokens_per_s']:.0f} tok/s")
            self.prog.update(self.task, completed=rec["step"], info=info)
        elif kind == "epoch":
            self._print(f"epoch {rec['epoch']}: acc {rec['accuracy']:.3f}  angle {_fmt(rec['angle'], '.4f')}  "
                        f"mu {_fmt(rec['mu'], '.1f')} -> {_fmt(rec['mu_next'], '.1f')}  "
                        f"mean rank {_fmt(rec['subset_mean_rank'], '.1f')}  rollout {rec['rollout_s']:.1f}s  "
                        f"update {rec['update_s']:.1f}s  rescore {rec['rescore_s']:.1f}s"
                        + (f"  eval {rec['eval_accuracy']:.3f}" if rec["eval_accuracy"] is not None else ""))
        elif kind == "eval":
            self._print(f"eval after epoch {rec['epoch']}: accuracy {rec['eval_accuracy']:.3f} on {rec['eval_n']} "
                        f"({rec['eval_s']:.1f}s)")
        elif kind == "score":
            extra = f", spearman vs previous {rec['spearman_prev']:.3f}" if rec.get("spearman_prev") is not None else ""
            self._print(f"scored {rec['n']:,} prompts in {rec['seconds']:.1f}s{extra}")
        elif kind == "log":
            self._print(f"[yellow]{rec['message']}[/]")
        elif kind == "end":
            if self.prog:
                self.prog.stop()
                self.prog = None
            acc = rec["final_eval_accuracy"]
            err.print(f"[bold green]done[/]: {rec['steps']} steps in {rec['elapsed_s']:.0f}s"
                      + (f", final eval accuracy {acc:.3f}" if acc is not None else "")
                      + (f"; model in {rec['checkpoint']}" if rec["checkpoint"] else "; no checkpoint (no training steps)"),
                      highlight=False)

    def _print(self, msg: str):
        (self.prog.console if self.prog else err).print(msg, highlight=False)


def plot_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (several: curves overlaid).",
                                                    show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="PNG file. Default: RUN_DIR/curves.png (first run).")] = None,
):
    """Plot a run's curves (reward, accuracy, eval accuracy vs steps and time, window, angle) to a PNG."""
    from anglerank.train.plot import plot_runs

    out = plot_runs(run_dirs, output)
    err.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("train", help=TRAIN_HELP, no_args_is_help=True)(user_errors(train_cmd))
    app.command("plot")(user_errors(plot_cmd))
