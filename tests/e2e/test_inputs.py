"""Inputs beyond Parquet and the Python API.

JSON Lines, JSON, a ``datasets`` save_to_disk folder, a ``datasets`` cache Arrow file and
in-memory tables (``datasets.Dataset``, ``pyarrow.Table``, polars) each score exactly as
the same rows from Parquet, resume after an interruption, and rank and sample; bad
inputs are one line; the notebook API returns tables and shows progress.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import anglerank
from anglerank.cli import app
from anglerank.data.locate import HubPath, parse_hub_path
from anglerank.data.writer import load_scores, read_manifest
from anglerank.errors import Interrupted, UserError
from helpers import env, one_error_line

runner = CliRunner()
# each form, and the format its manifest entry records
FORMATS = {"jsonl": "jsonl", "jsonl.gz": "jsonl", "json": "json", "save_to_disk": "arrow", "cache arrow": "arrow",
           "Dataset": "memory", "pyarrow": "memory", "polars": "memory"}
SCORE_COLUMNS = ["row", "id", "layer", "n_tokens", "n_prefix", "n_question", "intra", "inter", "score", "truncated",
                 "note"]


def _write_lines(path, rows, opener=open):
    with opener(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _in_form(kind: str, parquet, tmp_path):
    """The rows of ``parquet`` as a user of that form holds them."""
    import datasets

    table = pq.read_table(parquet)
    rows = table.to_pylist()
    if kind == "jsonl":
        return _write_lines(tmp_path / "q.jsonl", rows)
    if kind == "jsonl.gz":
        return _write_lines(tmp_path / "q.jsonl.gz", rows, gzip.open)
    if kind == "json":
        (tmp_path / "q.json").write_text(json.dumps(rows, indent=1))
        return str(tmp_path / "q.json")
    if kind == "save_to_disk":
        datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    if kind == "cache arrow":
        ds = datasets.load_dataset("parquet", data_files=str(parquet), split="train", cache_dir=str(tmp_path / "hf"))
        return ds.cache_files[0]["filename"]
    if kind == "Dataset":
        return datasets.Dataset(table)
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    return table


def _stop_after(rows: int):
    """A progress callback that interrupts the run (as Ctrl-C in a notebook does) past ``rows`` rows."""
    def report(done, total, tokens):
        if done > rows:
            raise KeyboardInterrupt
    return report


def _scores(table: pa.Table) -> pa.Table:
    return table.select(SCORE_COLUMNS).replace_schema_metadata(None)


@pytest.mark.parametrize("kind", FORMATS)
def test_every_form_scores_resumes_ranks_and_samples_like_parquet(kind, tmp_path, tiny_model_dir,
                                                                   questions_parquet, one_thread):
    opts = dict(model=str(tiny_model_dir), dtype="float32", device="cpu", progress=False)
    data = _in_form(kind, questions_parquet, tmp_path)
    ref = anglerank.score(str(questions_parquet), tmp_path / "ref", **opts)
    with pytest.raises(Interrupted, match="resume=True"):
        anglerank.score(data, tmp_path / "s", commit_every=8, **{**opts, "progress": _stop_after(8)})
    m = read_manifest(tmp_path / "s")
    assert not m["complete"] and m["next_row"] == 8 and [p["rows"] for p in m["parts"]] == [8]
    got = anglerank.score(data, tmp_path / "s", commit_every=8, resume=True, **opts)
    assert _scores(got).equals(_scores(ref))
    assert _scores(load_scores(tmp_path / "s")).equals(_scores(ref))
    entry = read_manifest(tmp_path / "s")["inputs"][0]
    assert entry["rows"] == 23 and entry["format"] == FORMATS[kind]

    ranked, ranked_ref = anglerank.rank(tmp_path / "s", data), anglerank.rank(tmp_path / "ref", questions_parquet)
    for col in ("angle_rank", "angle_score", "angle_pct"):
        assert ranked[col].to_pylist() == ranked_ref[col].to_pylist()
    assert ranked["prompt"].to_pylist() == ranked_ref["prompt"].to_pylist()
    assert ranked["extra_info"].to_pylist() == ranked_ref["extra_info"].to_pylist()
    cur = anglerank.sample(tmp_path / "s", data, subset=5, epochs=2, seed=3)
    cur_ref = anglerank.sample(tmp_path / "ref", questions_parquet, subset=5, epochs=2, seed=3)
    assert cur["epoch"].to_pylist() == [0] * 5 + [1] * 5
    assert cur["prompt"].to_pylist() == cur_ref["prompt"].to_pylist()


def test_cli_scores_jsonl_and_ranks_a_datasets_folder_by_default(tmp_path, tiny_model_dir, questions_parquet,
                                                                 one_thread):
    """The commands take the new forms too; rank/sample find recorded non-Parquet inputs themselves."""
    base = ["--model", str(tiny_model_dir), "--dtype", "float32", "--device", "cpu", "-q"]
    saved = _in_form("save_to_disk", questions_parquet, tmp_path)
    r = runner.invoke(app, ["score", saved, "-o", str(tmp_path / "s"), *base])
    assert r.exit_code == 0, r.output
    assert read_manifest(tmp_path / "s")["inputs"][0]["path"].endswith("data-00000-of-00001.arrow")
    r = runner.invoke(app, ["rank", str(tmp_path / "s"), "-o", str(tmp_path / "ranked.parquet")])
    assert r.exit_code == 0, r.output
    ranked = pq.read_table(tmp_path / "ranked.parquet")
    assert ranked.num_rows == 23 and ranked["angle_rank"].to_pylist() == list(range(23))
    assert b"huggingface" in ranked.schema.metadata  # the datasets features, with the angle columns added
    jsonl = _in_form("jsonl", questions_parquet, tmp_path)
    r = runner.invoke(app, ["score", jsonl, "-o", str(tmp_path / "j"), *base])
    assert r.exit_code == 0, r.output
    assert _scores(load_scores(tmp_path / "j")).equals(_scores(load_scores(tmp_path / "s")))
    r = runner.invoke(app, ["sample", str(tmp_path / "j"), "--data", saved, "-k", "4", "-e", "2",
                            "-o", str(tmp_path / "cur")])
    assert r.exit_code == 2 and "does not match the scored inputs" in r.stderr  # other bytes, other data


def _bad_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "What is 1+1?"}\n\n{"question": "What is 2+2?"\n{"question": "3?"}\n')
    return p


@pytest.mark.parametrize("case", ["bad line", "not an object", "empty folder", "unknown extension", "dict split",
                                  "one object"])
def test_bad_inputs_are_one_line(case, tmp_path, tiny_model_dir):
    if case == "bad line":
        spec, fragments = _bad_jsonl(tmp_path), ["bad.jsonl, line 3", "not valid JSON"]
    elif case == "not an object":
        spec = tmp_path / "list.jsonl"
        spec.write_text('{"question": "a"}\n[1, 2]\n')
        fragments = ["list.jsonl, line 2", "expected a JSON object, got a list"]
    elif case == "empty folder":
        spec, fragments = tmp_path / "empty", ["empty contains no .parquet, .jsonl, .arrow or .json files"]
        spec.mkdir()
    elif case == "unknown extension":
        spec, fragments = tmp_path / "data.csv", ["data.csv: unknown input format"]
        spec.write_text("question\nWhat is 1+1?\n")
    elif case == "dict split":
        import datasets

        ds = datasets.Dataset.from_dict({"question": ["a", "b"]})
        datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
        spec, fragments = tmp_path / "dd", ["DatasetDict (train, test)", "pass one split's folder"]
    else:
        spec = tmp_path / "one.json"
        spec.write_text('{\n "data": [{"question": "a"}],\n "version": 1\n}\n')
        fragments = ["holds one JSON object (keys: data, version)"]
    out = tmp_path / "out"
    r = runner.invoke(app, ["score", str(spec), "-o", str(out), "--model", str(tiny_model_dir), "-q"])
    one_error_line(r, *fragments)
    assert not out.exists() or not any(out.iterdir())


def test_bad_input_in_the_api_is_a_user_error_with_the_cli_message(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match=r"bad\.jsonl, line 3: not valid JSON"):
        anglerank.score(str(_bad_jsonl(tmp_path)), model=str(tiny_model_dir), progress=False)
    with pytest.raises(UserError, match="cannot read a builtins.dict as data"):
        anglerank.score({"question": ["a"]}, model=str(tiny_model_dir), progress=False)
    with pytest.raises(UserError, match="unknown option 'layer'"):
        anglerank.score(pa.table({"question": ["a"]}), layer=1)


def test_formats_by_name_and_by_content(tmp_path, questions_parquet):
    """The format comes from the name, else from the first bytes; every reader gives the same rows."""
    import pyarrow.ipc as ipc

    from anglerank.data.fragments import table_fingerprint
    from anglerank.data.reader import InputFiles

    table = pq.read_table(questions_parquet)
    (tmp_path / "noext").write_bytes(questions_parquet.read_bytes())  # Parquet without its extension
    with ipc.new_file(str(tmp_path / "file.arrow"), table.schema) as w:  # the IPC file format, not a stream
        w.write_table(table)
    lines = _write_lines(tmp_path / "lines.json", table.to_pylist())  # JSON Lines named .json, as datasets reads
    for spec in (tmp_path / "noext", tmp_path / "file.arrow", lines, [table.slice(0, 9), table.slice(9)]):
        files = InputFiles(spec)
        assert files.total_rows == 23 and files.take([22, 0, 5]).to_pylist() == table.take([22, 0, 5]).to_pylist()
        assert files.column("extra_info.index") == list(range(1000, 1023))
    noext, original = InputFiles(tmp_path / "noext").fingerprints()[0], InputFiles(questions_parquet).fingerprints()[0]
    assert noext["fingerprint"] == original["fingerprint"] and "format" not in noext  # Parquet, recorded as before
    # an in-memory table's fingerprint is its rows, however they are chunked
    rechunked = pa.concat_tables([table.slice(0, 4), table.slice(4)])
    assert table_fingerprint(rechunked) == table_fingerprint(table)
    assert table_fingerprint(table.slice(1)) != table_fingerprint(table)
    changed = tmp_path / "mixed.jsonl"
    changed.write_text('{"question": "a", "n": 1}\n{"question": "b", "n": "two"}\n')
    with pytest.raises(UserError, match="mixed.jsonl cannot be read as one table"):
        InputFiles(changed)


def test_a_cached_hub_dataset_is_read_offline(tmp_path, questions_parquet):
    snapshot = tmp_path / "hf" / "hub" / "datasets--o--n" / "snapshots" / "abc123"
    (snapshot / "data").mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    (snapshot / "data" / "train-0.parquet").write_bytes(questions_parquet.read_bytes())
    (snapshot / "README.json").write_text("{}")
    code = ("from anglerank.data.reader import InputFiles; "
            "print([(f.total_rows, f.fingerprints()[0]['path']) for f in "
            "(InputFiles('hf://datasets/o/n'), InputFiles('hf://datasets/o/n@main/data/*.parquet'))])")
    e = {**env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    path = str(snapshot / "data" / "train-0.parquet")
    assert r.stdout.strip() == repr([(23, path), (23, path)])


def test_hub_paths_parse():
    assert parse_hub_path("hf://datasets/openai/gsm8k") == HubPath("openai/gsm8k", None, "")
    assert parse_hub_path("hf://datasets/openai/gsm8k/main/test-*.parquet") == \
        HubPath("openai/gsm8k", None, "main/test-*.parquet")
    assert parse_hub_path("hf://datasets/o/n@v1.0/data/") == HubPath("o/n", "v1.0", "data")
    assert parse_hub_path("hf://datasets/o/n@refs%2Fconvert%2Fparquet/default/train/0000.parquet") == \
        HubPath("o/n", "refs/convert/parquet", "default/train/0000.parquet")
    assert parse_hub_path("hf://datasets/o/n@refs/convert/parquet/default") == \
        HubPath("o/n", "refs/convert/parquet", "default")
    assert parse_hub_path("hf://datasets/o/n@refs/pr/3/a.jsonl") == HubPath("o/n", "refs/pr/3", "a.jsonl")
    for bad, what in (("hf://datasets/gsm8k", "expected hf://datasets/OWNER/NAME"),
                      ("hf://models/o/n/x.parquet", "only Hub dataset repositories")):
        with pytest.raises(UserError, match=what):
            parse_hub_path(bad)


def test_offline_hub_path_is_one_line(tmp_path):
    e = {**env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "anglerank.cli", "rank", str(tmp_path / "nope"),
                        "--data", "hf://datasets/openai/gsm8k/main/test-*.parquet", "-o", str(tmp_path / "r.parquet")],
                       env=e, capture_output=True, text=True, timeout=120)
    one_error_line(r, "cannot download hf://datasets/openai/gsm8k/main/test-*.parquet",
                   "not reachable (offline)", "hf download openai/gsm8k --repo-type dataset")


def test_import_anglerank_does_not_import_torch():
    code = ("import sys, anglerank; assert callable(anglerank.score) and anglerank.errors.UserError; "
            "heavy = [m for m in ('torch', 'transformers', 'pyarrow', 'polars') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_notebook_session(tmp_path, tiny_model_dir, questions_parquet, one_thread, capsys):
    """What a notebook user does: load a Dataset, trim it, score it in memory, look, rank, sample."""
    import datasets
    import polars as pl

    ds = datasets.load_dataset("parquet", data_files=str(questions_parquet), split="train",
                               cache_dir=str(tmp_path / "hf"))
    ds = ds.filter(lambda r: r["extra_info"]["index"] % 2 == 0)  # a row selection: 12 of the 23 rows
    capsys.readouterr()
    scores = anglerank.score(ds, model=str(tiny_model_dir), dtype="float32", device="cpu")
    shown = capsys.readouterr().err
    assert "scoring" in shown and "12/12" in shown  # the progress bar
    assert isinstance(scores, pa.Table) and scores.num_rows == 12
    assert scores["id"].to_pylist() == list(range(1000, 1023, 2))
    top = pl.from_arrow(scores).sort("score", descending=True).head(3)
    assert top.height == 3 and top["score"].is_not_null().all()

    ranked = anglerank.rank(scores, data=ds)
    assert ranked.num_rows == 12 and ranked["angle_rank"].to_pylist() == list(range(12))
    best = top["row"][0]
    assert ranked["extra_info"][0].as_py() == ds[int(best)]["extra_info"]
    cur = anglerank.sample(scores, data=ds, subset=4, epochs=3, seed=1, output=tmp_path / "curriculum")
    assert cur.num_rows == 12 and sorted(set(cur["epoch"].to_pylist())) == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "curriculum").iterdir()) == [
        "epoch_0000.parquet", "epoch_0001.parquet", "epoch_0002.parquet", "sample.json"]

    with pytest.raises(UserError, match="in-memory data; pass the same data as data="):
        anglerank.rank(scores)
    with pytest.raises(UserError, match="does not match the scored inputs"):
        anglerank.rank(scores, data=ds.select(range(11)))
    capsys.readouterr()
    quiet = anglerank.score(ds.to_polars(), model=str(tiny_model_dir), dtype="float32", device="cpu",
                            progress=False)
    assert capsys.readouterr().err == ""
    assert quiet["score"].to_pylist() == scores["score"].to_pylist()
