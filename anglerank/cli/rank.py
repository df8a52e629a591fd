"""The `rank`, `sample` and `inspect` commands: thin Typer wrappers over anglerank.curation.

Registered on the main app by ``anglerank.cli``. Human output goes to the stderr
console, ``--json`` output to stdout; user mistakes end in one ``error:`` line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from anglerank.cli.common import (
    DataOpt, JsonOpt, QuietOpt, SeedOpt, curriculum_warnings, err, user_errors, warning_line, with_settings,
)
from anglerank.curriculum.config import CurriculumSettings
from anglerank.errors import UserError
from anglerank.settings import values
from anglerank.train.records import decile_rows, is_run_dir, summary_rows

# --- options of these commands (names kept distinct from score's --layer/--overwrite help) ---

ScoresDirArg = Annotated[Path, typer.Argument(
    help="Score directory written by `anglerank score` (scores-*.arrow + manifest.json).", show_default=False)]
ByOpt = Annotated[str, typer.Option(
    "--by", help="Ranking value: score (C_intra + C_inter, or the estimator's weighted sum), intra or inter.")]
AscendingOpt = Annotated[bool, typer.Option(
    "--ascending", help="Rank 0 = lowest value instead of highest (the paper trains on high concentration first).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Accept --data whose fingerprints differ from the scored files (rows are then joined by "
    "position) and incomplete score directories (missing rows get null scores).")]
ScoreLayerOpt = Annotated[Optional[int], typer.Option(
    "--layer", help="Which scored layer to use when the score directory holds several (the numbers listed in "
    "its manifest, e.g. 29). Required for rank/sample then; inspect defaults to the last one.")]
FileOverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
MemoryOpt = Annotated[float, typer.Option(
    "--memory-mb", help="Approximate memory for one pass over the data; larger data sets are written in several "
    "streaming passes (each re-reads the input).")]


def _recorded_inputs(scores_dir: Path) -> tuple[list[str], list[str]]:
    """(input files recorded in the score directory's manifest, those of them that no longer exist)."""
    from anglerank.data.writer import read_manifest

    manifest = read_manifest(scores_dir) if Path(scores_dir).is_dir() else None
    paths = [f["path"] for f in (manifest or {}).get("inputs", [])]
    return paths, [p for p in paths if not Path(p).exists()]


def _scored_data(scores_dir: Path, data: list[str] | None) -> list[str]:
    """--data, else the input files recorded in the score directory's manifest (if they still exist)."""
    if data:
        return data
    paths, gone = _recorded_inputs(scores_dir)
    if not paths or gone:
        why = f" ({gone[0]}, recorded in the manifest, no longer exists)" if gone else ""
        raise UserError(f"--data is required: the input(s) that were scored, in the same order{why}")
    return paths


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    tab = Table(title=title, show_header=False, title_justify="left")
    for k, v in rows:
        tab.add_row(k, v)
    err.print(tab)


def rank_cmd(
    scores_dir: ScoresDirArg,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output Parquet file (written atomically); a name with another extension than "
        ".parquet (r.csv) is refused.", show_default=False)],
    data: DataOpt = None,
    by: ByOpt = "score",
    ascending: AscendingOpt = False,
    drop_null: Annotated[bool, typer.Option(
        "--drop-null", help="Remove rows whose ranking value is null (unscorable or unscored) instead of putting "
        "them last. Note: the authors' released code sorts NaN scores first; anglerank keeps them last.")] = False,
    layer: ScoreLayerOpt = None,
    force: ForceOpt = False,
    overwrite: FileOverwriteOpt = False,
    memory_mb: MemoryOpt = 1024.0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Join scores back to the input rows and write them sorted by angle rank.

    Every input column keeps its type and nesting; added: angle_intra, angle_inter,
    angle_score, angle_rank (0 = highest value; equals the row's position in the
    file) and angle_pct = angle_rank / (scored rows - 1), 0..1, null for null rows.
    Rows with a null ranking value come last (ranks after all scored rows).
    """
    from anglerank.curation.rank import rank

    s = rank(scores_dir, _scored_data(scores_dir, data), output, by=by, ascending=ascending, drop_null=drop_null,
             force=force, layer=layer, overwrite=overwrite, memory_mb=memory_mb)
    if json_out:
        typer.echo(json.dumps(s, indent=2))
    _warnings(s)
    _warn_unscored(s, "--drop-null left them out" if s["dropped_null"] else
                   "they are ranked last with null angle columns; --drop-null leaves them out")
    if quiet:
        return
    nulls = ""
    if s["null"]:
        nulls = f", {s['null']:,} null " + ("dropped" if s["dropped_null"] else "ranked last")
    _table("anglerank rank", [
        ("output", s["output"]),
        ("rows", f"{s['rows_in']:,} in, {s['rows_out']:,} written ({s['scored']:,} scored{nulls})"),
        ("ranked by", f"{s['by']} {'ascending' if s['ascending'] else 'descending'} "
                      f"(estimator {s['estimator']}, layer {s['layer']})"),
        ("passes", f"{s['passes']} (window {s['window_rows']:,} rows)"),
        ("time", f"{s['elapsed_s']:.2f} s"),
    ])


RANK_UNITS = "Ranks or a fraction of N (rule above)."


@with_settings((CurriculumSettings, ["ranking", "mu0", "sigma", "wrap"]))
def sample_cmd(
    scores_dir: ScoresDirArg,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output directory for epoch_0000.parquet ... and sample.json; with --concat, the "
        "output Parquet file.", show_default=False)],
    subset: Annotated[str, typer.Option(
        "--subset", "-k", help="Rows per epoch (K), drawn without replacement. " + RANK_UNITS, show_default=False)],
    epochs: Annotated[int, typer.Option(
        "--epochs", "-e", help="Number of epochs (files) to write.", show_default=False)],
    data: DataOpt = None,
    step: Annotated[Optional[str], typer.Option(
        "--step", help="Centre move per epoch: mu_t = mu0 + t * step. Default: sweep from mu0 to the last rank "
        "over the epochs. The centre stays on the data: past the last rank it stays there (or see --wrap). "
        + RANK_UNITS, show_default=False)] = None,
    seed: SeedOpt = 0,
    keep_order: Annotated[bool, typer.Option(
        "--keep-order", help="Keep each epoch's rows in rank order (the released code's behaviour) instead of "
        "shuffling them (seeded).")] = False,
    concat: Annotated[bool, typer.Option(
        "--concat", help="Write one Parquet file (-o) with all epochs in order, for trainers reading with "
        "shuffle=False.")] = False,
    by: ByOpt = "score",
    ascending: AscendingOpt = False,
    include_null: Annotated[bool, typer.Option(
        "--include-null", help="Also sample rows with a null score (ranked after every scored row). Default: "
        "leave them out of the curriculum.")] = False,
    layer: ScoreLayerOpt = None,
    force: ForceOpt = False,
    overwrite: FileOverwriteOpt = False,
    memory_mb: MemoryOpt = 1024.0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    **settings,
):
    """Write an open-loop GAIN-RL curriculum: K rows per epoch from a Gaussian over angle ranks.

    Epoch t draws K distinct rows with probability proportional to
    exp(-0.5 ((rank - mu_t) / sigma)^2), mu_t = mu0 + t * step, rank 0 = highest
    score. No accuracy feedback (use the TRL or verl samplers for the closed loop).

    --subset, --mu0, --sigma and --step take ranks or a fraction of N (N = ranked
    rows): an integer (750, 1) is ranks; a decimal in (0, 1] is a fraction of N
    (0.1 = N/10, 1.0 = all of N); a larger decimal (750.0) is ranks.
    """
    from anglerank.curation.sample import sample

    with curriculum_warnings():
        s = sample(scores_dir, _scored_data(scores_dir, data), subset, epochs, output, step=step, seed=seed,
                   keep_order=keep_order, concat=concat, by=by, ascending=ascending,
                   include_null=include_null, force=force, layer=layer, overwrite=overwrite, memory_mb=memory_mb,
                   **values(CurriculumSettings, settings))
    if json_out:
        typer.echo(json.dumps(s, indent=2))
    _warnings(s)
    _warn_unscored(s, "--include-null samples them, ranked after every scored row" if s["include_null"] else
                   "they are left out of the curriculum (--include-null would sample them)")
    if quiet:
        return
    mus = s["mu"]
    _table("anglerank sample", [
        ("output", s["output"] + (" (one file)" if s["concat"] else f" ({len(s['files'])} files + sample.json)")),
        ("ranked rows (N)", f"{s['ranked']:,}"
         + (f" ({s['null_excluded']:,} null rows left out)" if s["null_excluded"] else "")),
        ("epochs x K", f"{s['epochs']} x {s['subset']:,} = {s['rows_written']:,} rows"),
        ("mu0 / sigma / step", f"{s['mu0']:.1f} / {s['sigma']:.1f} / {s['step']:.2f} ranks"),
        ("centre", f"{mus[0]:.1f} -> {mus[-1]:.1f}"),
        ("ranking", s["ranking"]),
        ("seed / order", f"{s['seed']} / {'shuffled' if s['shuffle'] else 'rank order'}"),
    ])


def inspect_cmd(
    scores_dir: Annotated[Path, typer.Argument(
        help="Score directory written by `anglerank score` (scores-*.arrow + manifest.json), or a training run "
        "directory (its per-prompt records, prompts.jsonl, are summarised).", show_default=False)],
    data: Annotated[Optional[list[str]], typer.Option(
        "--data", help="The scored Parquet input(s), to show the top and bottom questions' text. Default: the "
        "inputs recorded in the score directory, when they still exist.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="How many top and bottom rows to list.")] = 5,
    layer: ScoreLayerOpt = None,
    bins: Annotated[int, typer.Option("--bins", help="Histogram bins.")] = 20,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write a PNG: histograms of intra, inter, score and score vs question length "
        "(needs matplotlib: pip install 'anglerank\\[plot]').", show_default=False)] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
):
    """Summarise a score directory: counts, nulls, statistics, length correlation, histogram, extremes; or a
    training run: prompts drawn, re-draws, zero-variance groups, accuracy by rank decile."""
    from anglerank.curation.inspect import inspect

    if is_run_dir(scores_dir):
        if data or layer is not None:
            raise UserError(f"--data and --layer apply to score directories; {scores_dir} is a training run")
        _inspect_run(scores_dir, plot, json_out)
        return
    if not data:  # the recorded inputs, when they are still there, give the questions' text
        paths, gone = _recorded_inputs(scores_dir)
        data = paths if paths and not gone else None
    r = inspect(scores_dir, data, k=k, layer=layer, bins=bins, plot=plot, force=force)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    _show_inspect(r, scores_dir, with_questions=bool(data))


def _inspect_run(run_dir: Path, plot: Path | None, json_out: bool) -> None:
    """``inspect`` of a training run: its per-prompt records summarised (and drawn with --plot)."""
    import warnings

    from rich import box

    from anglerank.curation.inspect import inspect_run

    with warnings.catch_warnings(record=True) as caught:  # a torn last line: say so in one line
        warnings.simplefilter("always")
        s = inspect_run(run_dir, plot)
    for w in caught:
        err.print(f"warning: {w.message}", soft_wrap=True, highlight=False)
    if json_out:
        typer.echo(json.dumps(s, indent=2))
        return
    _table(f"anglerank inspect: {run_dir} (training run)", summary_rows(s))
    t = Table(title="accuracy by rank decile (0 = the first ranked tenth)", title_justify="left", box=box.SIMPLE,
              collapse_padding=True, pad_edge=False)
    for c in ("training", *map(str, range(10))):
        t.add_column(c, justify="right", no_wrap=True)
    for label, cells in decile_rows(s):
        t.add_row(label, *cells)
    err.print(t)
    if s.get("plot"):
        err.print(f"plot written to {s['plot']}", highlight=False)


def _show_inspect(r: dict, scores_dir: Path, with_questions: bool) -> None:
    """``inspect``'s result as tables on the stderr console."""
    from anglerank.curation.inspect import note_label, text_histogram

    sp = r["spearman"]
    _table(f"anglerank inspect: {scores_dir}", [
        ("model / estimator", f"{r['model']} / {r['estimator']} (site {r['site']}, layer {r['layer']})"),
        ("rows", f"{r['count']:,} score rows{'' if r['complete'] else ' (INCOMPLETE)'}; null intra "
                 f"{r['null']['intra']:,}, inter {r['null']['inter']:,}, score {r['null']['score']:,}; "
                 f"truncated {r['truncated']:,}"),
        ("Spearman with n_question", ", ".join(f"{c} {_f(v, '+.3f')}" for c, v in sp["n_question"].items())),
        ("Spearman with n_tokens", ", ".join(f"{c} {_f(v, '+.3f')}" for c, v in sp["n_tokens"].items())),
        *[("notes", "\n".join(note_label(g) for g in r["note_groups"]))] * bool(r["note_groups"]),
    ])
    # one column per term, one row per statistic: narrow enough for an 80-column terminal
    st = Table(title="statistics (std with ddof=1; linear quantiles)", title_justify="left")
    st.add_column("")
    for name in r["stats"]:
        st.add_column(name, justify="right", no_wrap=True)
    for c in ("count", "mean", "std", "min", "p05", "p25", "median", "p75", "p95", "max"):
        st.add_row(c, *[f"{d[c]:,}" if c == "count" else _f(d[c], ".5f") for d in r["stats"].values()])
    err.print(st)
    if r["histogram"]["counts"]:
        err.print("[bold]score histogram[/]")
        for line in text_histogram(r["histogram"]["edges"], r["histogram"]["counts"]):
            err.print(line, highlight=False)
    for label, rows in (("top", r["top"]), ("bottom", r["bottom"])):
        if not rows:
            continue
        t = Table(title=f"{label} {len(rows)} by score", title_justify="left")
        for c in ("row", "id", "score", "n_question", *(["question"] if with_questions else [])):
            t.add_column(c, overflow="fold" if c == "question" else "ellipsis")
        for d in rows:
            q = d.get("question")
            t.add_row(str(d["row"]), str(d.get("id")), _f(d["score"], ".5f"), str(d.get("n_question")),
                      *([_short(q)] if with_questions else []))
        err.print(t)
    if r.get("layers"):
        t = Table(title="per layer (score)", title_justify="left")
        for c in ("layer", "scored", "mean", "std", "Spearman n_question"):
            t.add_column(c, justify="right")
        for d in r["layers"]:
            t.add_row(str(d["layer"]), f"{d['scored']:,}", _f(d["mean"], ".5f"), _f(d["std"], ".5f"),
                      _f(d["spearman_n_question"], "+.3f"))
        err.print(t)
    if r.get("plot"):
        err.print(f"plot written to {r['plot']}", highlight=False)


def _warnings(s: dict) -> None:
    from rich.markup import escape

    for p in s["input_mismatch"]:
        err.print(f"[yellow]warning (--force):[/] {escape(p)}", highlight=False, soft_wrap=True)
    if not s["score_dir_complete"]:
        err.print("[yellow]warning (--force):[/] the score directory is incomplete; rows without a score count "
                  "as null", highlight=False, soft_wrap=True)


def _warn_unscored(s: dict, what_happens: str) -> None:
    """Rows the score directory never reached (a `score --limit` run) are easy to miss in the summary."""
    if s["unscored_rows"]:
        warning_line(f"{s['unscored_rows']:,} of {s['rows_in']:,} rows were never scored (the score directory "
                     f"covers {s['rows_in'] - s['unscored_rows']:,}, e.g. a `score --limit` run); {what_happens}")


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _short(q: str | None, n: int = 160) -> str:
    if q is None:
        return "-"
    q = " ".join(q.split())
    return q if len(q) <= n else q[: n - 1] + "…"


def register(app: typer.Typer) -> None:
    app.command("rank")(user_errors(rank_cmd))
    app.command("sample")(user_errors(sample_cmd))
    app.command("inspect")(user_errors(inspect_cmd))
