"""`anglerank validate`: check the angle signal against gradient norms and pass rates.

A thin command over :func:`anglerank.validate.run_validate`: progress and a rich
correlation table on stderr, the full JSON report (settings, per-sample values,
correlations) on stdout or in ``--json FILE``, and optional scatter plots.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from anglerank.cli_common import (
    BatchTokensOpt, PrefixCacheOpt, CodePrefixOpt, CodeSuffixOpt, DeviceOpt, DtypeOpt, EstimatorOpt, IdColumnOpt, LayerOpt,
    LayersOpt, MaxLengthOpt, ModelOpt, PrefixOpt, PresetOpt, PromptColumnOpt, QuietOpt, SeedOpt, SiteOpt,
    SystemOpt, WInterOpt, WIntraOpt, err, score_options, startup_over, user_errors,
)
from anglerank.errors import UserError

Y_LABELS = {"grad_a": "‖∇W_site‖", "grad_b": "‖∇θ‖", "pass_rate": "pass rate", "nll": "target NLL",
            "n_question": "question len", "n_tokens": "total tokens"}


def _fmt(c: dict | None) -> str:
    if c is None or c.get("spearman") is None:
        return "–"
    s = f"{c['spearman']:+.2f}"
    if c.get("partial_spearman") is not None:
        s += f" ({c['partial_spearman']:+.2f})"
    return s


def print_report(report: dict) -> None:
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
    if n > 3:
        err.print(f"[dim]95% intervals for ρ ≈ ±{1.96 * math.sqrt(1.06 / (n - 3)):.2f} at n={n} "
                  "(per-correlation intervals and n in the JSON).[/]")


SamplesOpt = Annotated[int, typer.Option("--samples", help="Prompts in the seeded sample (all rows if fewer).")]
TargetColumnOpt = Annotated[Optional[str], typer.Option(
    "--target-column", help="Column with a reference completion (dotted paths reach into structs, e.g. "
    "extra_info.answer). Default: the model's own greedy completion.")]
MaxNewTokensOpt = Annotated[int, typer.Option(
    "--max-new-tokens", help="Length of greedy completions and rollouts; reference targets are cut to it.")]
RolloutsOpt = Annotated[int, typer.Option(
    "--rollouts", help="G sampled completions per prompt for pass rates (0: skip). Needs --answer-column.")]
AnswerColumnOpt = Annotated[Optional[str], typer.Option(
    "--answer-column", help="Column with the reference final answer (e.g. reward_model.ground_truth); "
    "a \\boxed{} or '#### N' reference is reduced to its final answer.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Rollout sampling temperature.")]
AnswerFormatOpt = Annotated[str, typer.Option(
    "--answer-format", help="How a rollout's final answer is found: boxed (TRL's accuracy reward: \\boxed{}, a "
    "LaTeX answer, or '#### N') or any (else the last number it writes).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Rollout nucleus sampling threshold.")]
GenBatchOpt = Annotated[int, typer.Option("--gen-batch", help="Prompts per greedy-generation batch.")]
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


def validate(
    inputs: Annotated[list[str], typer.Argument(help="Parquet files, directories of them, or globs.", show_default=False)],
    samples: SamplesOpt = 64,
    seed: SeedOpt = 0,
    target_column: TargetColumnOpt = None,
    max_new_tokens: MaxNewTokensOpt = 256,
    rollouts: RolloutsOpt = 0,
    answer_column: AnswerColumnOpt = None,
    answer_format: AnswerFormatOpt = "boxed",
    temperature: TemperatureOpt = 0.9,
    top_p: TopPOpt = 1.0,
    gen_batch: GenBatchOpt = 8,
    json_file: JsonFileOpt = None,
    plot: PlotOpt = None,
    model: ModelOpt = None,
    prompt_column: PromptColumnOpt = None,
    id_column: IdColumnOpt = None,
    preset: PresetOpt = "none",
    system: SystemOpt = None,
    prefix: PrefixOpt = None,
    site: SiteOpt = "mlp-input",
    layer: LayerOpt = None,
    layers: LayersOpt = None,
    estimator: EstimatorOpt = "paper",
    w_intra: WIntraOpt = 1.0,
    w_inter: WInterOpt = None,
    code_prefix_tokens: CodePrefixOpt = 110,
    code_suffix_tokens: CodeSuffixOpt = 6,
    max_length: MaxLengthOpt = 4096,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_tokens: BatchTokensOpt = None,
    prefix_cache: PrefixCacheOpt = True,
    quiet: QuietOpt = False,
):
    """Correlate angle scores with per-prompt gradient norms (and pass rates) on a seeded sample.

    For each sampled prompt: the angle scores (as `anglerank score` computes them), the gradient norm of the
    mean token NLL of a target completion w.r.t. the weights that read the hooked site (mlp-input: the MLP
    input projections) and w.r.t. all weights (float32, one prompt per backward), and with --rollouts the
    pass rate of G sampled completions. Reports Spearman correlations, raw and with question length
    (tokens) partialled out.
    """
    from anglerank.plots import plot_report, require_matplotlib
    from anglerank.validate import ValidateOptions, run_validate

    sopt = score_options(locals())
    vopt = ValidateOptions(samples=samples, seed=seed, target_column=target_column, max_new_tokens=max_new_tokens,
                           rollouts=rollouts, answer_column=answer_column, answer_format=answer_format,
                           temperature=temperature, top_p=top_p, gen_batch=gen_batch)
    if plot is not None:
        require_matplotlib()
    if json_file is not None and json_file.is_dir():
        raise UserError(f"--json {json_file} is a directory")
    with _progress(quiet) as progress:
        report = run_validate(inputs, score_options=sopt, options=vopt, prompt_column=prompt_column,
                              id_column=id_column, progress=progress)
    _write_json(report, json_file)
    if plot is not None:
        plot_report(report, plot)
    if not quiet:
        print_report(report)
        for what, p in (("json", json_file), ("plot", plot)):
            if p is not None:
                err.print(f"{what}: {p}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("validate")(user_errors(validate))
