"""`anglerank validate`: check the angle signal against gradient norms and pass rates;
`anglerank passrate`: every prompt's pass rate as a column.

Thin commands over :func:`anglerank.validate.run_validate` (progress, a rich
correlation table and the pass-rate verdict on stderr, the full JSON report on
stdout or in ``--json FILE``, optional scatter plots) and
:func:`anglerank.passrate.run_passrate`.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from anglerank.cli.common import (
    JsonOpt, LimitOpt, OverwriteOpt, QuietOpt, err, score_options, startup_over, user_errors, warning_line,
    with_settings,
)
from anglerank.errors import UserError
from anglerank.plots import VALIDATE_LABELS as Y_LABELS, plot_report, require_matplotlib
from anglerank.rollouts import PassRateOptions, ValidateOptions
from anglerank.scoring.options import InputColumns, ModelSettings, PromptFormat, ScoreOptions
from anglerank.settings import values



def _fmt(c: dict | None) -> str:
    if c is None or c.get("spearman") is None:
        return "–"
    s = f"{c['spearman']:+.2f}"
    if c.get("partial_spearman") is not None:
        s += f" ({c['partial_spearman']:+.2f})"
    return s


def _interval(c: dict) -> str:
    if c["spearman"] is None:
        return f"undefined (n = {c['n']})"
    if c["ci95"] is None:
        return f"rho = {c['spearman']:+.2f}, n = {c['n']} (too few for an interval)"
    return f"rho = {c['spearman']:+.2f}, 95% CI [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}], n = {c['n']}"


def print_verdict(report: dict) -> None:
    """The score against measured pass rates: the verdict, then the partial and per-group correlations."""
    for a in report.get("pass_rate_agreement") or []:
        where = f"layer {a['layer']}: " if len(report["layers"]) > 1 else ""
        err.print(f"{where}{a['verdict']}", highlight=False, soft_wrap=True)
        if a.get("partial"):
            err.print(f"  question length partialled out: {_interval(a['partial'])}", highlight=False)
        for group, c in (a.get("groups") or {}).items():
            err.print(f"  {report['group_column']} = {group}: {_interval(c)}", highlight=False)


def print_report(report: dict) -> None:
    from anglerank.correlation import MIN_INTERVAL_N

    head = Table(title="anglerank validate", show_header=False, title_justify="left")
    head.add_row("model", f"{report['model']} (scores {report['dtype']}, gradients float32, {report['device']})")
    head.add_row("preset / site / estimator", f"{report['preset']} / {report['site']} / {report['estimator']}")
    head.add_row("samples", f"{report['n_samples']} of {report['input_rows']:,} rows (seed {report['seed']}), "
                            f"{report['n_with_gradients']} with gradients")
    head.add_row("target", report["target"])
    for layer, names in report["grad_a_params"].items():
        head.add_row(f"‖∇W_site‖ layer {layer}", ", ".join(names))
    if report["rollouts"]:
        rates = [r["pass_rate"] for r in report["per_sample"] if r["pass_rate"] is not None]
        mean = sum(rates) / len(rates) if rates else math.nan
        head.add_row("rollouts", f"G={report['rollouts']}, T={report['temperature']}, mean pass rate {mean:.3f}")
    if report.get("pass_rates"):
        head.add_row("pass rates", f"read from {report['pass_rates']}")
    head.add_row("time", f"{report['elapsed_s']:.1f} s")
    err.print(head)
    by = {(c["layer"], c["x"], c["y"]): c for c in report["correlations"]}
    ys = [y for y in Y_LABELS if any(c["y"] == y for c in report["correlations"])]
    for layer in report["layers"]:
        tab = Table(title=f"Spearman ρ (partial ρ controlling question length), layer {layer}", title_justify="left")
        tab.add_column("")
        for y in ys:
            tab.add_column(Y_LABELS[y], justify="right")
        for x in ("score", "intra", "inter", "n_question"):
            tab.add_row(x if x != "n_question" else "question len", *[_fmt(by.get((layer, x, y))) for y in ys])
        err.print(tab)
    n = report["n_samples"]
    if n >= MIN_INTERVAL_N:
        err.print(f"[dim]95% intervals for ρ ≈ ±{1.96 * math.sqrt(1.06 / (n - 3)):.2f} at n={n} "
                  "(per-correlation intervals and n in the JSON).[/]")
    else:
        err.print(f"[dim]n = {n} is too small for meaningful 95% intervals for ρ (at least {MIN_INTERVAL_N} "
                  "samples; more with --samples).[/]")
    print_verdict(report)


JsonFileOpt = Annotated[Optional[Path], typer.Option(
    "--json", help="Write the JSON report to FILE instead of stdout.", metavar="FILE")]
PlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", help="Scatter plots (PNG) for the deepest layer; needs matplotlib (pip install matplotlib).",
    metavar="FILE.png")]


@contextmanager
def _progress(quiet: bool):
    """A callback for run_validate's ``progress(stage, done, total)``: one bar per stage (none with --quiet)."""
    if quiet:
        yield lambda stage, done, total: startup_over()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int):
        startup_over()
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield update


def say_estimate(seconds: float, samples: int) -> None:
    """The expected time of a validate run, from its first prompt's timing."""
    if seconds >= 90:
        minutes = round(seconds / 60)
        when = f"about {minutes} minute{'s' if minutes != 1 else ''}"
    else:
        when = f"about {max(1, round(seconds))} seconds"
    err.print(f"validate: {when} for {samples} sample{'s' if samples != 1 else ''} (timed on the first prompt)",
              highlight=False)


def _write_json(report: dict, json_file: Path | None) -> None:
    """The report to ``json_file`` (atomically: a temporary file renamed into place), or to stdout."""
    text = json.dumps(report, indent=1, allow_nan=False, default=str)
    if json_file is None:
        typer.echo(text)
        return
    json_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_file.with_name(json_file.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(json_file)


@with_settings(ValidateOptions, InputColumns, ScoreOptions, skip=("device_map",), layers=True)
def validate(
    inputs: Annotated[list[str], typer.Argument(
        help="Parquet files, directories of them, or globs.", show_default=False)],
    json_file: JsonFileOpt = None,
    plot: PlotOpt = None,
    quiet: QuietOpt = False,
    **settings,
):
    """Correlate angle scores with per-prompt gradient norms (and pass rates) on a seeded sample.

    For each sampled prompt: the angle scores (as `anglerank score` computes them), the gradient norm of the
    mean token NLL of a target completion w.r.t. the weights that read the hooked site (mlp-input: the MLP
    input projections) and w.r.t. all weights (float32, one prompt per backward), and with --rollouts the
    pass rate of G sampled completions (or --pass-rates from `anglerank passrate`). Reports Spearman
    correlations, raw and with question length (tokens) partialled out, and with pass rates a plain verdict:
    does the angle ranking agree with measured difficulty on this sample (seeded bootstrap 95% interval)?
    """
    from anglerank.validate import run_validate

    sopt, vopt = score_options(settings), ValidateOptions(**values(ValidateOptions, settings))
    if plot is not None:
        require_matplotlib()
    if json_file is not None and json_file.is_dir():
        raise UserError(f"--json {json_file} is a directory")
    with _progress(quiet) as progress:
        report = run_validate(inputs, score_options=sopt, options=vopt, prompt_column=settings["prompt_column"],
                              id_column=settings["id_column"], progress=progress,
                              estimate=None if quiet else say_estimate, warn=warning_line)
    _write_json(report, json_file)
    if plot is not None:
        plot_report(report, plot)
    if not quiet:
        print_report(report)
        for what, p in (("json", json_file), ("plot", plot)):
            if p is not None:
                err.print(f"{what}: {p}", highlight=False)


@with_settings(PassRateOptions, InputColumns, ModelSettings, PromptFormat, (ScoreOptions, ["max_length"]))
def passrate(
    inputs: Annotated[list[str], typer.Argument(
        help="Parquet files, directories of them, or globs.", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output directory: pass_rates.parquet (row, id, n_rollouts, n_correct, pass_rate, "
        "note), data.parquet (the input rows plus pass_rate, n_correct, n_rollouts) and the committed parts with "
        "manifest.json.", show_default=False)],
    limit: LimitOpt = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run in OUTPUT after its last committed rows (settings must "
        "match).")] = False,
    commit_every: Annotated[int, typer.Option(
        "--commit-every", help="Commit the measured rows every N rows; --resume restarts from the last commit.")]
    = 64,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    **settings,
):
    """Measure every prompt's pass rate: G sampled completions judged by the math reward's checker.

    Writes the pass_rate column (with n_correct and n_rollouts) joinable with the input by row and id, and
    the input with those columns added: train on OUTPUT/data.parquet with --ranking column:pass_rate:desc for
    the easiest-first (oracle) order, or compare it with the angle score: anglerank validate DATA
    --pass-rates OUTPUT. Each prompt samples from its own seeded generator, so an interrupted run continued
    with --resume gives the same numbers.
    """
    from anglerank.passrate import DATA_FILE, RATES_FILE, run_passrate

    opt, sopt = PassRateOptions(**values(PassRateOptions, settings)), ScoreOptions(**values(ScoreOptions, settings))
    with _progress(quiet) as update:
        manifest = run_passrate(inputs, output, options=opt, score_options=sopt,
                                prompt_column=settings["prompt_column"], id_column=settings["id_column"], limit=limit,
                                overwrite=overwrite, resume=resume,
                                commit_every=commit_every, progress=lambda done, total: update("passrate", done, total),
                                warn=warning_line)
    if json_out:
        typer.echo(json.dumps(manifest, indent=2, default=str))
    if not quiet:
        import pyarrow.parquet as pq

        rates = [v for v in pq.read_table(output / RATES_FILE, columns=["pass_rate"]).column(0).to_pylist()
                 if v is not None]
        tab = Table(title="anglerank passrate", show_header=False, title_justify="left")
        tab.add_row("model", f"{manifest['model']} ({manifest['dtype']}, {manifest['device']})")
        tab.add_row("rows", f"{manifest['rows_expected']:,} measured, {len(rates):,} judged "
                            f"(G={opt.rollouts}, T={opt.temperature}, seed {opt.seed})")
        tab.add_row("mean pass rate", f"{sum(rates) / len(rates):.3f}" if rates else "–")
        tab.add_row("output", f"{output / RATES_FILE}, {output / DATA_FILE}")
        err.print(tab)


def register(app: typer.Typer) -> None:
    app.command("validate")(user_errors(validate))
    app.command("passrate")(user_errors(passrate))
