"""What a new user meets first: the demo through every recipe, honest warnings instead of silent
degenerate results, validate's estimate and intervals, and the small things around the commands.

Most tests use the tiny in-process model; one integration test runs the quickstart end to end
(the demo's data and scores on the embedded model, `anglerank rank`, the TRL example).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers import ROOT, cli_argv, env, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args):
    from anglerank.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _warnings_of(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir):
    """The 23-row verl-layout questions with only their first 5 rows scored (a `score --limit 5` run)."""
    import pyarrow as pa

    from anglerank.scoring.run import run_score

    d = tmp_path_factory.mktemp("scored")
    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(23)]
    data = d / "q.parquet"
    pq.write_table(pa.table({
        "prompt": [[{"role": "user", "content": q}] for q in qs],
        "reward_model": [{"ground_truth": str(2 * i + 3), "style": "rule"} for i in range(23)],
        "extra_info": [{"index": 1000 + i} for i in range(23)],
    }), data)
    run_score([str(data)], d / "s", model=str(tiny_model_dir), dtype="float32", device="cpu", limit=5)
    return data, d / "s"


# ------------------------------------------------------------------------------------------ the demo


def test_demo_writes_the_verl_layout_every_recipe_reads(tmp_path):
    from anglerank.demo import make_dataset

    t = pq.read_table(make_dataset(tmp_path / "p.parquet", n=6)).to_pylist()
    assert len(t) == 6
    for i, row in enumerate(t):
        q, a = row["extra_info"]["question"], row["extra_info"]["answer"]
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert row["prompt"][0]["content"].startswith(q)  # the question, then the answer-format instruction
        assert row["reward_model"] == {"style": "rule", "ground_truth": a} and a.lstrip("-").isdigit()
        assert row["extra_info"]["index"] == i and row["data_source"] and row["ability"] == "math"


@pytest.mark.integration
def test_quickstart_demo_rank_and_the_trl_example(tmp_path, embedded_model_dir, tiny_model_dir, monkeypatch):
    """`make demo` (on 8 rows), `anglerank rank` on its scores, then the TRL example's smoke settings."""
    pytest.importorskip("trl")
    from anglerank import demo

    monkeypatch.chdir(tmp_path)
    assert demo.main(["--dir", "d", "--rows", "8"]) == 0
    manifest = json.loads((tmp_path / "d" / "scores" / "manifest.json").read_text())
    assert manifest["prompt_column"] == "extra_info.question" and manifest["preset"] == "gainrl"
    res = _cli("rank", "d/scores", "-o", "d/ranked.parquet", "--quiet")
    assert res.exit_code == 0, res.output
    assert not _warnings_of(res)  # every row scored
    ranked = pq.read_table(tmp_path / "d" / "ranked.parquet")
    assert ranked.column("angle_rank").to_pylist() == list(range(8))
    # the TRL example as the README runs it (the tiny model instead of the embedded one, for speed)
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_gainrl.py"), "--data", "d/ranked.parquet",
         "--model", str(tiny_model_dir), "--max-rows", "8", "--subset-size", "4", "--epochs", "1",
         "--num-generations", "2", "--batch-size", "4", "--max-completion-length", "8", "--output-dir", "trl"],
        env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout[out.stdout.rindex("\n{\n"):]  # TRL's own log lines come first
    summary = json.loads(printed[: printed.rindex("}") + 1])
    assert [e["epoch"] for e in summary["epochs"]] == [1]  # counted from 1, as `anglerank train` counts
    assert summary["epochs"][0]["completions"] == 8
    assert (tmp_path / "trl" / "gainrl_state.json").exists()


# ---------------------------------------------------------------------------- mostly null scores


def test_score_warns_when_most_scores_are_null_and_inspect_groups_the_notes(tmp_path, tiny_model_dir,
                                                                          questions_parquet):
    out = tmp_path / "s"
    res = _cli("score", questions_parquet, "-o", out, "--model", tiny_model_dir, "--estimator", "gainrl-code",
               "--dtype", "float32", "--device", "cpu", "--limit", "12")
    assert res.exit_code == 0, res.output
    (line,) = _warnings_of(res)
    assert "12 of 12 scores are null" in " ".join(res.stderr.split()), res.stderr
    assert "gainrl-code slice empty: 12 rows" in " ".join(res.stderr.split())
    res = _cli("inspect", out, "--json")
    r = json.loads(res.stdout)
    (g,) = r["note_groups"]
    lengths = [int(n.split("(")[1].split()[0]) for n in r["notes"]]
    assert len(r["notes"]) > 1  # several token counts ...
    assert g == {"kind": "gainrl-code slice empty", "rows": 12, "unit": "tokens",
                 "min": min(lengths), "max": max(lengths)}  # ... one kind
    text = " ".join(_cli("inspect", out).stderr.split())
    assert f"gainrl-code slice empty: 12 rows, {min(lengths)}-{max(lengths)} tokens" in text
    res = _cli("score", questions_parquet, "-o", tmp_path / "p", "--model", tiny_model_dir, "--dtype", "float32",
               "--device", "cpu", "--limit", "6", "--quiet")
    assert res.exit_code == 0 and not _warnings_of(res), res.stderr  # scored rows: nothing to say


def test_note_groups_strip_numbers_and_split_joined_notes():
    from anglerank.curation.inspect import group_notes, note_label

    groups = group_notes({"gainrl-code slice empty (3 tokens)": 2, "gainrl-code slice empty (41 tokens)": 1,
                          "null question": 4, "empty prefix; question shorter than 2 tokens": 1,
                          "target cut to 256 tokens": 1})
    labels = [note_label(g) for g in groups]
    assert labels[:2] == ["null question: 4 rows", "gainrl-code slice empty: 3 rows, 3-41 tokens"]
    assert set(labels[2:]) == {"empty prefix: 1 row", "question shorter than N tokens: 1 row",
                               "target cut to N tokens: 1 row"}


# ---------------------------------------------------------------------------- degenerate settings


def test_a_subset_of_every_row_is_warned_about_once_by_each_consumer(tmp_path, scored):
    from anglerank.curriculum import Curriculum, CurriculumConfig, open_loop_schedule
    from anglerank.integrations.columns import curriculum_for

    def caught(fn):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            fn()
        return [str(w.message) for w in got]

    cfg = CurriculumConfig(subset_size=256)
    ranks = {"angle_rank": np.arange(48), "angle_score": np.linspace(1, 0, 48)}
    for fn in (lambda: Curriculum(np.arange(48), cfg),  # anglerank train
               lambda: curriculum_for(ranks, cfg),  # the TRL trainer and the verl sampler
               lambda: open_loop_schedule(48, 256, 3)):  # anglerank sample
        (msg,) = caught(fn)
        assert "K = 256" in msg and "N = 48" in msg and "every epoch takes all 48 rows" in msg
    assert caught(lambda: Curriculum(np.arange(48), cfg.replace(subset_size=47))) == []
    data, sdir = scored
    res = _cli("sample", sdir, "--data", data, "-o", tmp_path / "c", "-k", "256", "-e", "2", "--quiet")
    assert res.exit_code == 0, res.output
    assert any("K = 256" in w and "N = 5" in w for w in _warnings_of(res)), res.stderr


def test_rank_and_sample_warn_about_rows_never_scored(tmp_path, scored):
    data, sdir = scored
    res = _cli("rank", sdir, "--data", data, "-o", tmp_path / "r.parquet", "--quiet")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stderr.split())
    assert "18 of 23 rows were never scored" in text and "--drop-null" in text
    res = _cli("rank", sdir, "--data", data, "-o", tmp_path / "d.parquet", "--quiet", "--drop-null")
    assert "--drop-null left them out" in " ".join(res.stderr.split())
    assert pq.read_metadata(tmp_path / "d.parquet").num_rows == 5
    res = _cli("sample", sdir, "--data", data, "-o", tmp_path / "c", "-k", "2", "-e", "2", "--quiet")
    text = " ".join(res.stderr.split())
    assert res.exit_code == 0 and "18 of 23 rows were never scored" in text and "--include-null" in text


def test_rank_refuses_an_output_that_is_not_parquet(tmp_path, scored):
    data, sdir = scored
    one_error_line(_cli("rank", sdir, "--data", data, "-o", tmp_path / "r.csv"), "r.csv", ".parquet")
    assert not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------------------------------------ validate


def test_validate_estimates_its_time_and_keeps_intervals_to_meaningful_n(tmp_path, tiny_model_dir,
                                                                        questions_parquet, monkeypatch):
    pytest.importorskip("matplotlib")
    from anglerank import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    common = [questions_parquet, "--model", tiny_model_dir, "--samples", "4", "--max-new-tokens", "4",
              "--dtype", "float32", "--device", "cpu"]
    res = _cli("validate", *common, "--json", tmp_path / "a.json", "--plot", tmp_path / "p.png")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stderr.split())
    assert "validate: about" in text and "for 4 samples" in text
    assert text.index("validate: about") < text.index("anglerank validate")  # before the results
    assert "too small" in text and "±" not in text  # no "95% intervals ≈ ±2.02" at n = 4
    quiet = _cli("validate", *common, "--json", tmp_path / "b.json", "--quiet")
    assert quiet.exit_code == 0 and "about" not in quiet.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["per_sample"] == b["per_sample"]  # timing the first prompt ahead changes no number
    (fig,) = figures
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"‖∇W_site‖", "‖∇θ‖"} <= labels and not labels & {"grad_a", "grad_b"}  # as in the table


# --------------------------------------------------------------------------- the smaller things


def test_merge_marks_the_run_done_and_says_merge(tmp_path, tiny_model_dir, questions_parquet):
    from anglerank.scoring.run import run_score

    out = tmp_path / "s"
    for i in range(2):
        run_score([str(questions_parquet)], out, model=str(tiny_model_dir), dtype="float32", device="cpu",
                  num_shards=2, shard_index=i)
    assert not (out / "DONE").exists()
    res = _cli("merge", out)
    assert res.exit_code == 0, res.output
    assert (out / "DONE").read_text().strip() == "23"
    assert "anglerank merge" in res.stderr and "anglerank score" not in res.stderr


def test_version():
    res = _cli("--version")
    from anglerank import __version__

    assert res.exit_code == 0 and res.stdout.strip() == f"anglerank {__version__}"


def _help(*args, columns: int) -> str:
    e = {**env(), "COLUMNS": str(columns)}
    p = subprocess.run(cli_argv(*args), env=e, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout + p.stderr


@pytest.mark.parametrize("command", ["score", "train"])
def test_help_is_readable_at_80_columns_and_flags_have_no_type(command):
    narrow = _help(command, "--help", columns=80)
    assert "…" not in narrow and "<bool>" not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    names = ["--code-prefix-tokens", "--prefix-cache / --no-prefix-cache"] if command == "score" else \
        ["--gradient-checkpointing", "--save-total-limit"]
    for name in names:
        assert name in narrow
    wide = _help("rank", "--help", columns=200)  # rich's panels
    assert "--drop-null" in wide and "<bool>" not in wide


def test_inspect_statistics_fit_80_columns(scored):
    _, sdir = scored
    e = {**env(), "COLUMNS": "80"}
    p = subprocess.run(cli_argv("inspect", sdir), env=e, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    stats = p.stderr[p.stderr.index("statistics"):p.stderr.index("score histogram")]
    assert "…" not in stats and "median" in stats and "0." in stats


def test_curriculum_epochs_count_from_one():
    from anglerank.curriculum import Curriculum, CurriculumConfig

    cur = Curriculum(np.arange(40), CurriculumConfig(subset_size=8, seed=1))
    for _ in range(2):
        cur.begin_epoch()
        cur.observe([1.0, 0.0])
        cur.end_epoch()
    assert [e["epoch"] for e in cur.epochs] == [1, 2]
    assert [h["epoch"] for h in cur.state_dict()["sampler"]["history"]] == [1, 2]


def test_documented_output_paths_are_ignored_at_the_root():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0

    for path in ("scores/manifest.json", "ranked.parquet", "curriculum/sample.json", "runs/r1/config.toml",
                 "passrates/data.parquet", "merged/model.safetensors"):
        assert ignored(path), path
    assert not ignored("anglerank/curriculum/epoch.py") and not ignored("docs/ranked.parquet")
    assert os.path.exists(ROOT / ".gitignore")


@pytest.mark.parametrize("columns", ["80", "120", "200"])
def test_every_command_help_renders_at_any_width(columns):
    """Help text is rich markup at wide terminals: a stray [/...] in a help string would crash --help there."""
    import typer

    from anglerank.cli import app

    names = sorted(typer.main.get_command(app).commands)
    for name in names:
        p = subprocess.run([sys.executable, "-m", "anglerank.cli", name, "--help"], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": columns}, timeout=120)
        assert p.returncode == 0 and "--help" in p.stdout, (name, columns, p.stderr[-300:])
