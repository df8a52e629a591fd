"""Nothing lost, nothing corrupted: output locks, verified score parts, atomic curricula,
clean signals, undecodable cells, and user mistakes reported as user errors.

Concurrency and signals are tested with real processes (``python -m anglerank.cli``);
damaged parts are damaged on disk, byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.data.lock import output_lock
from anglerank.data.writer import CorruptScores, OutputError, load_scores, read_manifest
from anglerank.scoring.distributed import merge
from anglerank.scoring.run import run_score
from helpers import ROOT, make_data, make_scores, random_terms

runner = CliRunner()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(args):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(res, *fragments):
    """Exit 2 and exactly one ``error:`` line holding every fragment (a CliRunner result or a CompletedProcess)."""
    code = getattr(res, "exit_code", getattr(res, "returncode", None))
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert code == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "internal error" not in lines[0], lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _kw(model_dir, **extra):
    return dict(model=str(model_dir), dtype="float32", device="cpu", **extra)


@pytest.fixture
def setup30(tmp_path):
    data = make_data(tmp_path / "data.parquet", 30)
    sdir = make_scores(tmp_path / "scores", [data], {-1: random_terms(30)})
    return data, sdir


@pytest.fixture
def scored(tmp_path, tiny_model_dir, questions_parquet, one_thread):
    """A real score directory of 23 rows in three parts (8, 8, 7 rows), with checksums."""
    out = tmp_path / "scored"
    run_score([str(questions_parquet)], out, window_rows=8, commit_every=8, **_kw(tiny_model_dir))
    return out


def _flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- 2. one writer per output

def _python(code: str, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _cmd(*args):
    return [sys.executable, "-m", "anglerank.cli", *map(str, args)]


@pytest.mark.parametrize("command", ["score", "rank", "sample", "sample-concat", "merge"])
def test_second_writer_is_refused_naming_the_holder(tmp_path, setup30, tiny_model_dir, questions_parquet, command):
    """While one process holds an output, every writing command on it fails in one line, exit 2."""
    data, sdir = setup30
    out = tmp_path / "out"
    args, target, directory = {
        "score": (["score", questions_parquet, "-o", out, "--model", tiny_model_dir, "--resume", "-q"], out, True),
        "rank": (["rank", sdir, "--data", data, "-o", out, "-q"], out, False),
        "sample": (["sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", out, "-q"], out, False),
        "sample-concat": (["sample", sdir, "--data", data, "-k", "3", "-e", "2", "--concat", "-o", out, "-q"],
                          out, False),
        "merge": (["merge", out, "-q"], out, True),
    }[command]
    if command == "merge":
        (out / "shard-00000-of-00001").mkdir(parents=True)
    with output_lock(target, what="test output", directory=directory):
        p = subprocess.run(_cmd(*args), env=_env(), capture_output=True, text=True, timeout=120)
    _one_error_line(p, "in use by another process", f"pid {os.getpid()}")
    assert not (out / "manifest.json").exists() and not (out / "epoch_0000.parquet").exists()
    assert not (out.is_file())


def test_merge_refuses_while_a_shard_is_being_scored(tmp_path, setup30):
    data, sdir = setup30
    out = tmp_path / "sharded"
    shard = out / "shard-00001-of-00002"
    (out / "shard-00000-of-00002").mkdir(parents=True)
    shard.mkdir()
    with output_lock(shard, what="score output"):
        p = subprocess.run(_cmd("merge", out), env=_env(), capture_output=True, text=True, timeout=120)
    _one_error_line(p, "shard 1", "in use", f"pid {os.getpid()}")


def test_lock_dies_with_its_holder_and_names_it(tmp_path):
    """kill -9 leaves the lock file behind, but never a stale lock; the holder's pid and command are named."""
    out = tmp_path / "out"
    code = ("import sys, time; from anglerank.data.lock import output_lock\n"
            "with output_lock(sys.argv[1], what='score output'):\n"
            "    print('locked', flush=True); time.sleep(120)\n")
    proc = _python(code, out)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"score output .* is in use by another process \(pid {proc.pid}.*-c"):
            with output_lock(out, what="score output"):
                pass
        info = json.loads((out / ".anglerank.lock").read_text())
        assert info["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert (out / ".anglerank.lock").exists()  # left by kill -9 ...
    with output_lock(out, what="score output") as lock:  # ... and free
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (out / ".anglerank.lock").exists()


def test_lock_is_reentrant_and_cleans_up(tmp_path):
    out = tmp_path / "new" / "dir"
    with output_lock(out) as lock:
        assert lock == out.resolve() / ".anglerank.lock" and lock.exists()
        with output_lock(out):  # the same process may lock an output it holds
            pass
        assert lock.exists()
    assert not (tmp_path / "new").exists()  # created for the lock, nothing written: removed again
    f = tmp_path / "ranked.parquet"
    with output_lock(f, directory=False) as lock:
        assert lock == tmp_path.resolve() / ".ranked.parquet.lock"
    assert not lock.exists() and list(tmp_path.iterdir()) == []


def test_lock_module_works_without_fcntl(tmp_path):
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "from anglerank.data import lock\n"
            "assert lock.fcntl is None\n"
            "with lock.output_lock(sys.argv[1]):\n"
            "    with lock.output_lock(sys.argv[1]): print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


# ---------------------------------------------------------------- 3. verified parts

def test_parts_record_row_count_size_and_checksum(scored):
    m = read_manifest(scored)
    assert [p["rows"] for p in m["parts"]] == [8, 8, 7]
    for p in m["parts"]:
        data = (scored / p["file"]).read_bytes()
        assert p["bytes"] == len(data) and p["blake2b"] == hashlib.blake2b(data, digest_size=16).hexdigest()


@pytest.mark.parametrize("damage, message", [
    (_flip_byte, "scores-00001.arrow fails its checksum"),
    (_truncate, "scores-00001.arrow is truncated"),
    (Path.unlink, "scores-00001.arrow is missing"),
])
def test_every_reader_refuses_a_damaged_part(scored, questions_parquet, tmp_path, damage, message):
    damage(scored / "scores-00001.arrow")
    for args in (["rank", scored, "-o", tmp_path / "r.parquet"],
                 ["rank", scored, "-o", tmp_path / "r.parquet", "--force"],
                 ["sample", scored, "-k", "3", "-e", "2", "-o", tmp_path / "cur"],
                 ["inspect", scored]):
        res = _cli(args)
        _one_error_line(res, message, "--resume")
    assert not (tmp_path / "r.parquet").exists() and not (tmp_path / "cur").exists()
    with pytest.raises(CorruptScores, match=message):
        load_scores(scored)


def test_manifest_without_checksums_still_reads_and_checks_row_counts(setup30, tmp_path):
    data, sdir = setup30  # a hand-made manifest: parts with rows only, as written before checksums
    assert "blake2b" not in read_manifest(sdir)["parts"][0]
    assert _cli(["rank", sdir, "--data", data, "-o", tmp_path / "ok.parquet", "-q"]).exit_code == 0
    m = read_manifest(sdir)
    m["parts"][0]["rows"] += 1
    (sdir / "manifest.json").write_text(json.dumps(m))
    _one_error_line(_cli(["rank", sdir, "--data", data, "-o", tmp_path / "a.parquet"]),
                    "scores-00000.arrow holds 15 rows, the manifest records 16")
    m["parts"][0]["rows"] -= 1
    (sdir / "manifest.json").write_text(json.dumps(m))
    _truncate(sdir / "scores-00001.arrow")
    _one_error_line(_cli(["rank", sdir, "--data", data, "-o", tmp_path / "b.parquet"]),
                    "scores-00001.arrow is not a readable Arrow file")


def test_complete_directory_with_extra_rows_is_refused(tmp_path):
    """Two writers interleaved: 'complete', with more score rows than input rows."""
    data = make_data(tmp_path / "d.parquet", 30)
    sdir = make_scores(tmp_path / "s", [data], {-1: random_terms(30)}, rows_expected=24)
    _one_error_line(_cli(["rank", sdir, "--data", data, "-o", tmp_path / "r.parquet"]),
                    "marked complete but holds 30 score rows, expected 24")


@pytest.mark.parametrize("damage", [_flip_byte, Path.unlink])
def test_resume_rescores_a_damaged_part(scored, tmp_path, tiny_model_dir, questions_parquet, damage):
    """A finished directory with a damaged or missing part: --resume scores it again, identically."""
    reference = load_scores(scored).to_pylist()
    damage(scored / "scores-00001.arrow")
    warnings = []
    m = run_score([str(questions_parquet)], scored, resume=True, window_rows=8, commit_every=8,
                  warn=warnings.append, **_kw(tiny_model_dir))
    assert m["complete"] and (scored / "DONE").exists()
    assert any("scores-00001.arrow" in w and "scoring again from row 8" in w for w in warnings), warnings
    assert load_scores(scored).to_pylist() == reference
    assert sorted(p.name for p in scored.glob("scores-*.arrow")) == [p["file"] for p in m["parts"]]


def test_merge_refuses_a_damaged_shard_part_and_resume_repairs_it(tmp_path, tiny_model_dir, questions_parquet,
                                                                   scored, one_thread):
    out = tmp_path / "sharded"
    kw = _kw(tiny_model_dir, window_rows=8, commit_every=8)
    for i in range(2):
        run_score([str(questions_parquet)], out, num_shards=2, shard_index=i, **kw)
    shard1 = out / "shard-00001-of-00002"
    _flip_byte(shard1 / "scores-00000.arrow")
    _one_error_line(_cli(["merge", out, "-q"]), "shard 1", "scores-00000.arrow fails its checksum", "--resume")
    assert read_manifest(out) is None
    run_score([str(questions_parquet)], out, num_shards=2, shard_index=1, resume=True, **kw)
    merged = merge(out)
    assert load_scores(out).to_pylist() == load_scores(scored).to_pylist()
    assert all("blake2b" in p for p in merged["parts"])


# ---------------------------------------------------------------- 6. atomic curricula

_SLOW_SAMPLE = """
import sys, time
import anglerank.curation.sample as s
real, n = s.AtomicParquet.__exit__, [0]
def slow_exit(self, *exc):
    out = real(self, *exc)
    n[0] += 1
    if n[0] == 3:  # three epoch files written: stop here until killed
        print("written", flush=True)
        time.sleep(120)
    return out
s.AtomicParquet.__exit__ = slow_exit
sys.argv = ["anglerank", *sys.argv[1:]]
from anglerank.cli import main
main()
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_interrupted_sample_leaves_no_curriculum_and_reruns(setup30, tmp_path, sig, code):
    data, sdir = setup30
    out = tmp_path / "cur"
    args = ["sample", sdir, "--data", data, "-k", "3", "-e", "6", "-o", out, "-q"]
    proc = _python(_SLOW_SAMPLE, *args)
    try:
        assert proc.stdout.readline().strip() == "written", proc.stderr.read() if proc.poll() is not None else ""
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    if sig == signal.SIGTERM:
        line = [x for x in stderr.splitlines() if x.strip()]
        assert len(line) == 1 and "interrupted: no curriculum was written" in line[0], stderr
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cur")] == []
    assert not out.exists()  # nothing half-written where the curriculum goes
    res = _cli(args)  # the rerun needs no --overwrite
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [f"epoch_{t:04d}.parquet" for t in range(6)] + ["sample.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cur")] == []  # stale staging removed


def test_sample_directory_replacement_rules(setup30, tmp_path):
    data, sdir = setup30
    out = tmp_path / "cur"
    args = ["sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", out, "-q"]
    out.mkdir()
    (out / "epoch_0007.parquet").write_text("left by an interrupted run")  # no sample.json: not finished
    (out / "notes.txt").write_text("the user's")
    assert _cli(args).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["epoch_0000.parquet", "epoch_0001.parquet", "notes.txt",
                                                    "sample.json"]
    _one_error_line(_cli(args), "already holds a curriculum", "--overwrite")
    assert _cli(args + ["-e", "1", "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["epoch_0000.parquet", "notes.txt", "sample.json"]
    (out / "notes.txt").unlink()
    assert _cli(args + ["--overwrite"]).exit_code == 0  # only curriculum files: replaced by one rename
    assert sorted(p.name for p in out.iterdir()) == ["epoch_0000.parquet", "epoch_0001.parquet", "sample.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------- 7. undecodable cells

def _invalid_utf8_parquet(path: Path) -> Path:
    raw = pa.array([b"What is 1+1?", b"broken \xff\xfe text", b"Why is the sky blue?"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # the bytes as they are: no UTF-8 check
    pq.write_table(pa.table({"question": text, "id": [1, 2, 3]}), path)
    with pytest.raises(UnicodeDecodeError):
        pq.read_table(path).to_pylist()
    return path


def test_invalid_utf8_cell_is_a_null_score_with_a_note(tmp_path, tiny_model_dir):
    data = _invalid_utf8_parquet(tmp_path / "bad.parquet")
    out = tmp_path / "o"
    res = _cli(["score", data, "-o", out, "--model", tiny_model_dir, "--dtype", "float32", "-q"])
    assert res.exit_code == 0, res.output
    rows = load_scores(out).to_pylist()
    assert [r["row"] for r in rows] == [0, 1, 2] and read_manifest(out)["complete"]
    assert rows[1]["score"] is None and rows[1]["note"] == "invalid UTF-8 in column 'question'"
    assert rows[1]["id"] == 2
    assert rows[0]["score"] is not None and rows[2]["score"] is not None
    res = _cli(["rank", out, "-o", tmp_path / "r.parquet", "-q"])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- 10. signals during rank

_SLOW_RANK = """
import sys, time
import anglerank.data.reader as r
real = r.ParquetFiles.take
def slow_take(self, rows):
    print("writing", flush=True)
    time.sleep(120)
    return real(self, rows)
r.ParquetFiles.take = slow_take
sys.argv = ["anglerank", *sys.argv[1:]]
from anglerank.cli import main
main()
"""


def _rank_stopped_while_writing(setup30, out: Path, sig) -> tuple[int, str]:
    """A rank into ``out`` that gets ``sig`` once its partial file exists: its exit code and stderr."""
    data, sdir = setup30
    out.parent.mkdir()
    proc = _python(_SLOW_RANK, "rank", sdir, "--data", data, "-o", out)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # the partial file exists now
        proc.send_signal(sig)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    return proc.returncode, stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_rank_signal_cleans_up_and_says_so(setup30, tmp_path, sig, code):
    outdir = tmp_path / "ranked"
    out = outdir / "r.parquet"
    returncode, stderr = _rank_stopped_while_writing(setup30, out, sig)
    assert returncode == code, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"interrupted: {out} was not written" in lines[0], stderr
    assert list(outdir.iterdir()) == []  # no output, no temporary file, no lock file


def test_rank_after_kill_9_removes_the_temporary_it_left(setup30, tmp_path):
    data, sdir = setup30
    outdir = tmp_path / "ranked"
    out = outdir / "r.parquet"
    _rank_stopped_while_writing(setup30, out, signal.SIGKILL)  # nothing of ours runs
    assert [p.name for p in outdir.iterdir() if p.name.endswith(".tmp")]  # the partial file it leaves
    keep = outdir / ".r.parquet.notes.tmp"  # not one of ours: stays
    keep.write_text("x")
    res = _cli(["rank", sdir, "--data", data, "-o", out])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in outdir.iterdir() if p.name.endswith(".tmp")) == [keep.name]
    assert pq.read_table(out).num_rows == 30


# ---------------------------------------------------------------- 11, 12. user input is a user error

@pytest.mark.parametrize("value", ["inf", "nan", "0", "-5", "-inf"])
@pytest.mark.parametrize("command", ["rank", "sample"])
def test_memory_mb_must_be_positive_and_finite(setup30, tmp_path, command, value):
    data, sdir = setup30
    extra = ["-k", "3", "-e", "2"] if command == "sample" else []
    res = _cli([command, sdir, "--data", data, "-o", tmp_path / "o", *extra, "--memory-mb", value])
    _one_error_line(res, "--memory-mb must be a positive number")
    assert not (tmp_path / "o").exists()


def test_struct_id_column_is_refused_before_scoring(tmp_path, tiny_model_dir, questions_parquet):
    out = tmp_path / "o"
    res = _cli(["score", questions_parquet, "-o", out, "--model", tiny_model_dir, "--id-column", "extra_info", "-q"])
    _one_error_line(res, "id column 'extra_info' has type struct", "extra_info.index")
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("[1, 2, 3]", "holds a JSON list, not an anglerank manifest"),
    ('{"parts": [{"file": "../../etc/passwd", "rows": 1}]}', "malformed 'parts'"),
    ('{"parts": ', "is not valid JSON"),
])
def test_damaged_manifest_is_a_user_error_everywhere(setup30, tmp_path, tiny_model_dir, questions_parquet, text,
                                                     message):
    data, sdir = setup30
    (sdir / "manifest.json").write_text(text)
    for args in (["rank", sdir, "-o", tmp_path / "r.parquet"],
                 ["rank", sdir, "--data", data, "-o", tmp_path / "r.parquet"],
                 ["sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", tmp_path / "cur"],
                 ["inspect", sdir],
                 ["score", questions_parquet, "-o", sdir, "--model", tiny_model_dir, "--resume", "-q"]):
        _one_error_line(_cli(args), message)
    shards = tmp_path / "sharded"
    (shards / "shard-00000-of-00001").mkdir(parents=True)
    (shards / "shard-00000-of-00001" / "manifest.json").write_text(text)
    _one_error_line(_cli(["merge", shards]), message)


# ---------------------------------------------------------------- 14. one shard is not the whole run

def test_one_shard_needs_force(tmp_path):
    data = make_data(tmp_path / "d.parquet", 30)
    sdir = make_scores(tmp_path / "run" / "shard-00000-of-00002", [data], {-1: random_terms(30)[:16]})
    m = read_manifest(sdir)
    m.update(num_shards=2, shard_index=0, row_start=0, row_stop=16, rows_expected=30)
    (sdir / "manifest.json").write_text(json.dumps(m))
    for args in (["rank", sdir, "--data", data, "-o", tmp_path / "r.parquet"],
                 ["sample", sdir, "--data", data, "-k", "3", "-e", "2", "-o", tmp_path / "cur"],
                 ["inspect", sdir]):
        _one_error_line(_cli(args), "holds only shard 0 of 2", "rows 0..15 of 30", "anglerank merge", "--force")
    res = _cli(["rank", sdir, "--data", data, "-o", tmp_path / "r.parquet", "--force", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["unscored_rows"] == 14 and s["score_dir_complete"] is False
    assert "incomplete" in res.stderr
    _one_error_line(_cli(["rank", tmp_path / "run", "--data", data, "-o", tmp_path / "r2.parquet"]),
                    "unmerged shards", "anglerank merge")
