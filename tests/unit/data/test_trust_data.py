"""The data side trusts only its own files: score, merge, rank, sample and inspect against a hostile
output directory, crafted state, a full disk, unusual column types and bad option values.

Organised by family; each family's helpers can be reused for a new command. The full disk is
real (a private tmpfs, ``hostile.on_small_disk``); links, foreign files and manifests are planted
on disk the way a user or another program would leave them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.data.reader import file_fingerprint
from anglerank.data.writer import checksum, load_scores, read_manifest, score_schema, write_json_atomic
from anglerank.scoring.run import run_score
from helpers import can_make_small_disk, make_data, make_scores, on_small_disk, one_error_line, random_terms

runner = CliRunner()
PRECIOUS = b"the user's file: must never change\n"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _kw(model_dir, **extra):
    return dict(model=str(model_dir), dtype="float32", device="cpu", **extra)


@pytest.fixture
def setup30(tmp_path):
    data = make_data(tmp_path / "data.parquet", 30)
    return data, make_scores(tmp_path / "scores", [data], {-1: random_terms(30)})


@pytest.fixture
def victim(tmp_path):
    """A file outside every output that a planted link points at."""
    v = tmp_path / "elsewhere" / "victim.txt"
    v.parent.mkdir()
    v.write_bytes(PRECIOUS)
    return v


def make_shards(run: Path, data: Path, n: int = 30, cut: int = 16) -> Path:
    """Two finished shards of ``n`` rows (``[0, cut)`` and ``[cut, n)``), written by hand with checksums."""
    schema = score_schema(pa.int64(), with_layer=True)
    inputs = [{"path": str(data), "size": data.stat().st_size, "rows": n, "fingerprint": file_fingerprint(data)}]
    for i, (lo, hi) in enumerate([(0, cut), (cut, n)]):
        d = run / f"shard-{i:05d}-of-00002"
        d.mkdir(parents=True)
        rows = [{"row": r, "id": 1000 + r, "layer": -1, "n_tokens": 40, "n_prefix": 10, "n_question": 20,
                 "intra": 0.01 * r, "inter": 0.2, "score": 0.01 * r + 0.2, "truncated": False, "note": None}
                for r in range(lo, hi)]
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, schema) as w:
            w.write_table(pa.Table.from_pylist(rows, schema=schema))
        part = sink.getvalue().to_pybytes()
        (d / "scores-00000.arrow").write_bytes(part)
        write_json_atomic(d / "manifest.json", {
            "model": "hand", "estimator": "paper", "site": "mlp-input", "layers": [-1], "inputs": inputs,
            "inputs_fingerprint": "x", "prompt_column": "prompt", "complete": True, "num_shards": 2,
            "shard_index": i, "row_start": lo, "row_stop": hi, "rows_expected": n, "next_row": hi,
            "elapsed_s": 1.0, "tokens": 100,
            "parts": [{"file": "scores-00000.arrow", "rows": hi - lo, "bytes": len(part), "blake2b": checksum(part)}],
        })
        (d / "DONE").write_text(f"{hi - lo}\n")
    return run


def snapshot(d: Path) -> dict[str, bytes]:
    """Every plain file directly in ``d``, name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and not p.is_symlink()}


# ---------------------------------------------------------------- symlinks planted in an output

@pytest.mark.parametrize("command", ["score-resume", "rank", "sample", "merge"])
def test_a_symlinked_lock_file_is_refused_not_written_through(tmp_path, setup30, victim, tiny_model_dir,
                                                              questions_parquet, command):
    data, sdir = setup30
    out = tmp_path / "out"
    if command in ("rank", "sample"):
        out.mkdir()
        lock = out / ".r.parquet.lock"
        args = [command, sdir, "--data", data, "-o", out / "r.parquet", "-q"]
        args += ["-k", "3", "-e", "2"] if command == "sample" else []
    elif command == "merge":
        make_shards(out, data)
        lock, args = out / ".anglerank.lock", ["merge", out, "-q"]
    else:
        out.mkdir()
        lock = out / ".anglerank.lock"
        args = ["score", questions_parquet, "-o", out, "--model", tiny_model_dir, "--dtype", "float32", "--resume",
                "-q"]
    lock.symlink_to(victim)
    one_error_line(cli(*args), str(lock.parent.resolve() / lock.name), "symbolic link")
    assert victim.read_bytes() == PRECIOUS
    assert lock.is_symlink() and not (out / "r.parquet").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize("name", [".write-test.tmp", ".manifest.json.tmp", ".scores-00000.arrow.tmp", "DONE",
                                  "manifest.json"])
def test_score_refuses_a_link_under_one_of_its_names(tmp_path, victim, tiny_model_dir, questions_parquet, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    res = cli("score", questions_parquet, "-o", out, "--model", tiny_model_dir, "--dtype", "float32", "-q")
    one_error_line(res, str(out / name), "symbolic link")
    assert victim.read_bytes() == PRECIOUS and (out / name).is_symlink()


def test_merge_refuses_a_link_under_a_part_temporary(tmp_path, setup30, victim):
    data, _ = setup30
    run = make_shards(tmp_path / "run", data)
    (run / ".scores-00000.arrow.tmp").symlink_to(victim)
    one_error_line(cli("merge", run, "-q"), ".scores-00000.arrow.tmp", "symbolic link")
    assert victim.read_bytes() == PRECIOUS and not (run / "manifest.json").exists()


def test_a_symlinked_output_directory_given_by_the_user_is_used(tmp_path, setup30, tiny_model_dir,
                                                                questions_parquet):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    m = run_score([str(questions_parquet)], tmp_path / "link", **_kw(tiny_model_dir))
    assert m["complete"] and (real / "manifest.json").is_file() and (real / "DONE").is_file()


# ---------------------------------------------------------------- foreign files in an output

def test_score_writes_beside_foreign_files_and_never_removes_them(tmp_path, tiny_model_dir, questions_parquet,
                                                                  one_thread):
    out = tmp_path / "out"
    out.mkdir()
    foreign = {"scores-final.arrow": b"my own merged scores", ".draft.tmp": b"my notes", "scores-1.arrow": b"x"}
    for name, content in foreign.items():
        (out / name).write_bytes(content)
    kw = dict(window_rows=8, commit_every=8, **_kw(tiny_model_dir))
    m = run_score([str(questions_parquet)], out, **kw)  # only foreign files: not "already holds scores"
    reference = load_scores(out).to_pylist()
    assert m["complete"]
    (out / "scores-00007.arrow").write_bytes(b"left by a killed run")  # ours by name: removed on resume
    run_score([str(questions_parquet)], out, resume=True, **kw)
    assert not (out / "scores-00007.arrow").exists()
    run_score([str(questions_parquet)], out, overwrite=True, **kw)
    for name, content in foreign.items():
        assert (out / name).read_bytes() == content, name
    assert load_scores(out).to_pylist() == reference
    assert sorted(p["file"] for p in read_manifest(out)["parts"]) == sorted(
        p.name for p in out.glob("scores-0*.arrow"))


def test_merge_keeps_foreign_files_and_replaces_only_its_parts(tmp_path, setup30):
    data, _ = setup30
    run = make_shards(tmp_path / "run", data)
    (run / "scores-final.arrow").write_bytes(b"the user's")
    (run / "scores-00009.arrow").write_bytes(b"left by a merge cut short")
    assert cli("merge", run, "-q").exit_code == 0
    assert (run / "scores-final.arrow").read_bytes() == b"the user's"
    assert not (run / "scores-00009.arrow").exists()
    assert cli("merge", run, "--overwrite", "-q").exit_code == 0
    assert (run / "scores-final.arrow").read_bytes() == b"the user's"
    assert load_scores(run).column("row").to_pylist() == list(range(30))


# ---------------------------------------------------------------- crafted state

def _plant(manifest_path: Path, field: str, value) -> None:
    m = json.loads(manifest_path.read_text())
    m[field] = value
    manifest_path.write_text(json.dumps(m))


@pytest.mark.parametrize("field, value", [
    ("inputs", None), ("row_start", "a"), ("layers", "29"), ("inputs", [1, 2]), ("complete", "yes"),
    ("rows_expected", -4), ("parts", [{"file": "scores-00000.arrow", "rows": 15, "bytes": "abc"}]),
])
def test_a_crafted_manifest_field_is_named_by_every_reader(tmp_path, setup30, tiny_model_dir, questions_parquet,
                                                           field, value):
    data, sdir = setup30
    _plant(sdir / "manifest.json", field, value)
    for args in (["rank", sdir, "-o", tmp_path / "r.parquet"],
                 ["rank", sdir, "--data", data, "-o", tmp_path / "r.parquet", "--force"],
                 ["sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", tmp_path / "cur", "--force"],
                 ["inspect", sdir, "--force"],
                 ["score", questions_parquet, "-o", sdir, "--model", tiny_model_dir, "--resume", "-q"]):
        one_error_line(cli(*args), str(sdir / "manifest.json"), repr(field))
    run = make_shards(tmp_path / "run", data)
    _plant(run / "shard-00001-of-00002" / "manifest.json", field, value)
    one_error_line(cli("merge", run), "shard-00001-of-00002", repr(field))
    assert not (run / "manifest.json").exists() and not (tmp_path / "r.parquet").exists()


def test_merge_names_a_field_missing_from_a_shard(tmp_path, setup30):
    data, _ = setup30
    run = make_shards(tmp_path / "run", data)
    m = read_manifest(run / "shard-00000-of-00002")
    del m["elapsed_s"]
    write_json_atomic(run / "shard-00000-of-00002" / "manifest.json", m)
    one_error_line(cli("merge", run), "shard-00000-of-00002", "elapsed_s")


# ---------------------------------------------------------------- full disk

needs_small_disk = pytest.mark.skipif(not can_make_small_disk(), reason="no unprivileged user+mount namespaces")

_FILL = 'dd if=/dev/zero of="$DISK/fill" bs=1k 2>/dev/null; true'


def _steps(res, out: Path, n: int) -> list[tuple[int, str]]:
    """(exit code, stderr) of each numbered step a disk script recorded under ``out``."""
    assert res.returncode == 0, res.stderr
    return [(int((out / f"{i}.rc").read_text()), (out / f"{i}.err").read_text()) for i in range(n)]


def _step(i: int, command: str) -> str:
    return f'{command} 2>"$OUT/{i}.err"; echo $? >"$OUT/{i}.rc"; ls -A "$DISK" >"$OUT/{i}.ls"\n'


def _failed_naming(step, path: str) -> None:
    code, stderr = step
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("error: cannot write ") and path in lines[0] and "No space left" in lines[0], lines


@needs_small_disk
def test_rank_and_sample_on_a_full_disk(tmp_path, setup30):
    """Exit 2 naming the file, no temporary left, the previous output byte-identical, a rerun works."""
    data, sdir = setup30
    disk, out = tmp_path / "disk", tmp_path / "steps"
    out.mkdir()
    rank = f'$ANGLERANK rank {sdir} --data {data} -o "$DISK/r.parquet" -q'
    sample = f'$ANGLERANK sample {sdir} --data {data} -k 3 -e 2 -q -o'
    script = (f'OUT={out}\n' + _FILL + "\n" + _step(0, rank) + 'rm "$DISK/fill"\n' + _step(1, rank)
              + 'cp "$DISK/r.parquet" "$OUT/before.parquet"; head -c 4096 /dev/zero >"$DISK/spacer"\n'
              + _FILL + '\nrm "$DISK/spacer"\n' + _step(2, rank + " --overwrite")
              + _step(3, sample + ' "$DISK/c.parquet" --concat') + _step(4, sample + ' "$DISK/cur"')
              + 'cp "$DISK/r.parquet" "$OUT/after.parquet"; rm "$DISK/fill"\n'
              + _step(5, sample + ' "$DISK/cur"'))
    steps = _steps(on_small_disk(disk, 64, script), out, 6)
    _failed_naming(steps[0], f"{disk}/r.parquet")
    assert (out / "0.ls").read_text().split() == ["fill"]  # no temporary, no lock file left
    assert steps[1][0] == 0, steps[1][1]
    _failed_naming(steps[2], f"{disk}/r.parquet")  # a few KB free: the same line as the fresh case
    _failed_naming(steps[3], f"{disk}/c.parquet")
    _failed_naming(steps[4], f"{disk}/cur/epoch_0000.parquet")
    assert (out / "4.ls").read_text().split() == ["fill", "r.parquet"]
    assert (out / "before.parquet").read_bytes() == (out / "after.parquet").read_bytes()
    assert steps[5][0] == 0, steps[5][1]
    assert (out / "5.ls").read_text().split() == ["cur", "r.parquet"]


@needs_small_disk
def test_merge_on_a_full_disk_names_its_output_and_keeps_the_previous_one(tmp_path, setup30):
    data, _ = setup30
    run = make_shards(tmp_path / "run", data)
    disk, out = tmp_path / "disk", tmp_path / "steps"
    out.mkdir()
    merge = '$ANGLERANK merge "$DISK/run" -q'
    script = (f'OUT={out}\ncp -r {run} "$DISK/run"\n' + _FILL + "\n" + _step(0, merge) + 'rm "$DISK/fill"\n'
              + _step(1, merge) + 'cp -r "$DISK/run" "$OUT/before"\n' + _FILL + "\n"
              + _step(2, merge + " --overwrite") + 'cp -r "$DISK/run" "$OUT/after"\n')
    steps = _steps(on_small_disk(disk, 96, script), out, 3)
    _failed_naming(steps[0], f"{disk}/run/scores-00000.arrow")
    assert steps[1][0] == 0, steps[1][1]
    _failed_naming(steps[2], f"{disk}/run/")
    assert "shard-" not in steps[2][1]  # the destination is named, not the shard part being copied
    assert snapshot(out / "before") == snapshot(out / "after")
    assert load_scores(out / "after").column("row").to_pylist() == list(range(30))
    assert not [p for p in (out / "after").iterdir() if p.name.endswith(".tmp")]


@needs_small_disk
def test_score_on_a_full_disk_before_its_first_part(tmp_path, tiny_model_dir, questions_parquet):
    disk, out = tmp_path / "disk", tmp_path / "steps"
    out.mkdir()
    score = f'$ANGLERANK score {questions_parquet} -o "$DISK/s" --model {tiny_model_dir} --dtype float32 -q'
    steps = _steps(on_small_disk(disk, 64, f'OUT={out}\n' + _FILL + "\n" + _step(0, score)), out, 1)
    _failed_naming(steps[0], f"{disk}/s/manifest.json")
    assert (out / "0.ls").read_text().split() == ["fill"]  # nothing left: a rerun starts afresh


# ---------------------------------------------------------------- column types

def _view_data(tmp_path: Path, kind: pa.DataType) -> tuple[Path, Path]:
    qs = [f"Question {i}: what is {i} + {i}?" for i in range(30)]
    data = tmp_path / f"{kind}.parquet"
    pq.write_table(pa.table({"question": pa.array(qs, kind), "id": list(range(30))}), data, row_group_size=7)
    sdir = make_scores(tmp_path / f"scores-{kind}", [data], {-1: random_terms(30)})
    _plant(sdir / "manifest.json", "prompt_column", "question")
    return data, sdir


@pytest.mark.parametrize("kind", [pa.string_view(), pa.large_string(), pa.string()])
def test_every_command_reads_string_view_and_large_string_columns(tmp_path, kind):
    data, sdir = _view_data(tmp_path, kind)
    res = cli("rank", sdir, "--data", data, "-o", tmp_path / "r.parquet", "-q")
    assert res.exit_code == 0, res.output
    ranked = pq.read_table(tmp_path / "r.parquet")
    assert sorted(ranked.column("question").to_pylist()) == sorted(f"Question {i}: what is {i} + {i}?"
                                                                   for i in range(30))
    res = cli("sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", tmp_path / "cur", "-q")
    assert res.exit_code == 0, res.output
    res = cli("sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", tmp_path / "cur2", "-q",
              "--ranking", "column:id")
    assert res.exit_code == 0, res.output
    res = cli("inspect", sdir, "--data", data, "--json")
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)["top"]
    assert top and all(d["question"] == f"Question {d['row']}: what is {d['row']} + {d['row']}?" for d in top)


def _float_ids(tmp_path: Path, id_type: pa.DataType) -> Path:
    ids = [[float(i)] for i in range(6)] if pa.types.is_list(id_type) else [float(i) for i in range(6)]
    data = tmp_path / "float_ids.parquet"
    pq.write_table(pa.table({"question": [f"What is {i} + {i}?" for i in range(6)],
                             "id": pa.array(ids, id_type)}), data)
    return data


@pytest.mark.parametrize("id_type", [pa.float64(), pa.list_(pa.float64())])
def test_an_id_column_of_another_type_is_named(tmp_path, tiny_model_dir, id_type):
    data = _float_ids(tmp_path, id_type)
    res = cli("score", data, "-o", tmp_path / "auto", "--model", tiny_model_dir, "--dtype", "float32", "-q")
    assert res.exit_code == 0, res.output
    warning = [x for x in res.stderr.splitlines() if x.startswith("warning:")]
    assert len(warning) == 1 and "'id'" in warning[0] and "double" in warning[0], res.stderr
    assert "--id-column" in warning[0] and read_manifest(tmp_path / "auto")["id_column"] is None
    res = cli("score", data, "-o", tmp_path / "named", "--model", tiny_model_dir, "--id-column", "id", "-q")
    one_error_line(res, "id column 'id' has type", "integer or a string")
    assert not (tmp_path / "named").exists()


# ---------------------------------------------------------------- option values

@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--seed", "-99999999999"], "--seed must be an integer >= 0"),
])
def test_sample_option_values_fail_in_one_line(tmp_path, setup30, args, message):
    data, sdir = setup30
    one_error_line(cli("sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", tmp_path / "cur", *args), message)
    assert not (tmp_path / "cur").exists()


@pytest.mark.parametrize("args, message", [
    (["--num-shards", "0", "--shard-index", "0"], "--num-shards must be >= 1"),
    (["--code-prefix-tokens", "-1", "--estimator", "gainrl-code"], "--code-prefix-tokens must be a non-negative integer"),
    (["--code-suffix-tokens", "-6"], "--code-suffix-tokens must be a non-negative integer"),
])
def test_score_option_values_fail_in_one_line_before_any_work(tmp_path, tiny_model_dir, questions_parquet, args,
                                                              message):
    out = tmp_path / "out"
    one_error_line(cli("score", questions_parquet, "-o", out, "--model", tiny_model_dir, "-q", *args), message)
    assert not out.exists()

