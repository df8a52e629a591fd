"""Never losing work: sharding + merge, torchrun, kill/resume, hostile inputs, write failures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.data.writer import load_scores, read_manifest
from anglerank.scoring.distributed import auto_window_rows, merge, shard_range
from anglerank.scoring.run import run_score
from helpers import ROOT

runner = CliRunner()


def _kw(model_dir):
    return dict(model=str(model_dir), dtype="float32", device="cpu")


@pytest.mark.parametrize("total", [0, 1, 7, 8, 23, 100, 1000, 5000])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shard_ranges_tile_rows(total, n):
    w = auto_window_rows(total)
    ranges = [shard_range(total, n, i, w) for i in range(n)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    for (a, b), (c, d) in zip(ranges, ranges[1:]):
        assert b == c and a <= b
    for a, b in ranges:
        assert a % w == 0  # shards start on the window grid


@pytest.fixture
def many_rows(tmp_path):
    qs = [("apples and pears " * (i % 9 + 1)) + f"question number {i}?" for i in range(120)]
    p = tmp_path / "many.parquet"
    pq.write_table(pa.table({"question": qs, "id": list(range(120))}), p, row_group_size=25)
    return p


def test_two_shards_merge_equals_single_process(tmp_path, tiny_model_dir, many_rows):
    single = tmp_path / "single"
    run_score([str(many_rows)], single, **_kw(tiny_model_dir))
    sharded = tmp_path / "sharded"
    for i in range(2):
        m = run_score([str(many_rows)], sharded, num_shards=2, shard_index=i, **_kw(tiny_model_dir))
        assert 0 < m["row_stop"] - m["row_start"] < 120
    merged = merge(sharded)
    assert merged["complete"] and merged["rows_expected"] == 120
    assert load_scores(sharded).to_pylist() == load_scores(single).to_pylist()


def test_merge_checks(tmp_path, tiny_model_dir, many_rows):
    single = tmp_path / "single"
    run_score([str(many_rows)], single, **_kw(tiny_model_dir))
    sharded = tmp_path / "sharded"
    run_score([str(many_rows)], sharded, num_shards=3, shard_index=0, **_kw(tiny_model_dir))
    run_score([str(many_rows)], sharded, num_shards=3, shard_index=2, **_kw(tiny_model_dir))
    r = runner.invoke(app, ["merge", str(sharded)])
    assert r.exit_code == 2 and "shard(s) 1 of 3 missing" in r.output
    run_score([str(many_rows)], sharded, num_shards=3, shard_index=1, **_kw(tiny_model_dir))
    # an interrupted shard is refused with its position named
    m1 = sharded / "shard-00001-of-00003"
    (m1 / "DONE").unlink()
    r = runner.invoke(app, ["merge", str(sharded)])
    assert r.exit_code == 2 and "shard 1 stopped at row" in r.output
    (m1 / "DONE").write_text("x")
    r = runner.invoke(app, ["merge", str(sharded), "-q"])
    assert r.exit_code == 0, r.output
    assert load_scores(sharded).to_pylist() == load_scores(single).to_pylist()
    assert read_manifest(sharded)["num_shards"] == 3
    r = runner.invoke(app, ["merge", str(sharded), "-q"])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_shard_settings_mismatch_refused(tmp_path, tiny_model_dir, many_rows):
    out = tmp_path / "s"
    run_score([str(many_rows)], out, num_shards=2, shard_index=0, **_kw(tiny_model_dir))
    run_score([str(many_rows)], out, num_shards=2, shard_index=1, preset="gainrl", **_kw(tiny_model_dir))
    with pytest.raises(Exception, match="different settings") as exc:
        merge(out)
    assert "preset: 'none' -> 'gainrl'" in str(exc.value)


def test_manifest_settings_compare_in_one_format():
    from anglerank.data import manifest
    from anglerank.data.writer import OutputError

    a = {k: 1 for k in manifest.RESUME_KEYS}
    manifest.check_resume(a, dict(a), "out")
    manifest.check_shards([a, {**a, "num_shards": 9, "shard_index": 3}])  # shards differ only in their place
    with pytest.raises(OutputError) as exc:
        manifest.check_resume(a, {**a, "preset": "gainrl", "shard_index": 2}, "out")
    msg = str(exc.value)
    assert msg.startswith("cannot resume out: settings differ from the interrupted run")
    assert "preset: 1 -> 'gainrl'" in msg and "shard_index: 1 -> 2" in msg and "new output directory" in msg
    with pytest.raises(OutputError, match=r"shard 2 was scored with different settings than shard 0 \(site: 1 -> 2\)"):
        manifest.check_shards([a, a, {**a, "site": 2}])


def test_merge_does_not_import_torch():
    code = ("import anglerank.scoring.distributed, anglerank.data.manifest, sys; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # the same thread count as the in-process runs they are compared with bit for bit
    # (CPU attention kernels round differently for some shapes with other thread counts)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


def _score_cmd(data, out, model_dir, *extra):
    return [sys.executable, "-m", "anglerank.cli", "score", str(data), "-o", str(out), "--model", str(model_dir),
            "--dtype", "float32", "-q", *extra]


def test_torchrun_two_processes_gloo(tmp_path, tiny_model_dir, many_rows):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not found")
    single = tmp_path / "single"
    run_score([str(many_rows)], single, **_kw(tiny_model_dir))
    out = tmp_path / "tr"
    import socket

    with socket.socket() as s:  # a free port, so parallel or repeated runs never collide on a fixed one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", str(port), "-m", "anglerank.cli"] + \
        _score_cmd(many_rows, out, tiny_model_dir)[3:]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "shard-00000-of-00002").is_dir() and (out / "shard-00001-of-00002").is_dir()
    assert load_scores(out).to_pylist() == load_scores(single).to_pylist()


def _wait_parts(out: Path, k: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = read_manifest(out) if (out / "manifest.json").exists() else None
        if m and len(m.get("parts", [])) >= k:
            return m
        if proc.poll() is not None:
            pytest.fail("scoring finished before it could be interrupted")
        time.sleep(0.05)
    pytest.fail("no parts committed in time")


SLOW = ("--commit-every", "20", "--batch-tokens", "16")  # one row per batch: still running when the signal comes


@pytest.fixture(scope="module")
def big_rows(tmp_path_factory):
    qs = [("apples " * (i % 13 + 1)) + f"q{i}?" for i in range(1200)]
    p = tmp_path_factory.mktemp("big") / "big.parquet"
    pq.write_table(pa.table({"question": qs}), p, row_group_size=100)
    return p


@pytest.fixture(scope="module")
def big_scores(tmp_path_factory, tiny_model_dir, big_rows):
    """The uninterrupted run every killed-and-resumed one must equal (the same settings: the same batches)."""
    full = tmp_path_factory.mktemp("big-full") / "full"
    run_score([str(big_rows)], full, commit_every=20, batch_tokens=16, **_kw(tiny_model_dir))
    return load_scores(full)


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_kill_and_resume_is_identical(tmp_path, tiny_model_dir, big_rows, big_scores, sig, code):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_score_cmd(big_rows, out, tiny_model_dir, *SLOW), env=_env(),
                            stderr=subprocess.PIPE, text=True)
    _wait_parts(out, 2, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    if sig != signal.SIGKILL:
        assert "--resume" in stderr and "Traceback" not in stderr
    m = read_manifest(out)
    assert not m["complete"] and sum(p["rows"] for p in m["parts"]) == m["next_row"]
    r = subprocess.run(_score_cmd(big_rows, out, tiny_model_dir, *SLOW, "--resume"), env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = load_scores(out), big_scores
    assert a.column("row").to_pylist() == list(range(1200))
    assert a.to_pylist() == b.to_pylist()  # same rows once each, bit-identical values


def test_writer_failure_leaves_no_corrupt_part_and_resume_works(tmp_path, tiny_model_dir, many_rows, monkeypatch):
    import pyarrow.ipc as ipc

    import anglerank.data.writer as writer

    full = tmp_path / "full"
    run_score([str(many_rows)], full, commit_every=16, **_kw(tiny_model_dir))
    real, calls = ipc.new_file, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(writer.ipc, "new_file", flaky)
    out = tmp_path / "o"
    r = runner.invoke(app, ["score", str(many_rows), "-o", str(out), "--model", str(tiny_model_dir), "--dtype",
                            "float32", "--commit-every", "16", "-q"])
    assert r.exit_code == 2 and "No space left" in r.output and "--resume" in r.output
    assert not list(out.glob(".*.tmp"))
    m = read_manifest(out)
    assert len(m["parts"]) == 2 and sorted(p.name for p in out.glob("scores-*.arrow")) == [
        "scores-00000.arrow", "scores-00001.arrow"]
    monkeypatch.setattr(writer.ipc, "new_file", real)
    r = runner.invoke(app, ["score", str(many_rows), "-o", str(out), "--model", str(tiny_model_dir), "--dtype",
                            "float32", "--commit-every", "16", "-q", "--resume"])
    assert r.exit_code == 0, r.output
    assert load_scores(out).to_pylist() == load_scores(full).to_pylist()


# --- hostile inputs -----------------------------------------------------------------------

def _score(args, model_dir):
    return runner.invoke(app, ["score", *args, "--model", str(model_dir), "--dtype", "float32", "-q"])


def test_corrupt_truncated_and_empty_files(tmp_path, tiny_model_dir, many_rows):
    good = many_rows.read_bytes()
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(good[:4] + bytes(200) + good[204:])  # data pages garbled, footer intact
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(good[: len(good) // 2])
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), empty)
    for path, msg in ((corrupt, "cannot read"), (truncated, "not a readable Parquet"), (empty, "no rows")):
        out = tmp_path / f"o-{path.stem}"
        r = _score([str(path), "-o", str(out)], tiny_model_dir)
        assert r.exit_code == 2, (path, r.output)
        assert msg in r.output
        assert "Traceback" not in r.output
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_zero_row_file_among_others_and_one_row_groups(tmp_path, tiny_model_dir):
    d = tmp_path / "dir"
    d.mkdir()
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), d / "a.parquet")
    pq.write_table(pa.table({"question": [f"What is {i}+1?" for i in range(9)]}), d / "b.parquet", row_group_size=1)
    r = _score([str(d), "-o", str(tmp_path / "o")], tiny_model_dir)
    assert r.exit_code == 0, r.output
    assert load_scores(tmp_path / "o").column("row").to_pylist() == list(range(9))


def test_directory_with_different_schemas_names_file(tmp_path, tiny_model_dir):
    d = tmp_path / "dir"
    d.mkdir()
    pq.write_table(pa.table({"question": ["a b c"]}), d / "a.parquet")
    pq.write_table(pa.table({"question": ["a b c"], "extra": [1]}), d / "b.parquet")
    r = _score([str(d), "-o", str(tmp_path / "o")], tiny_model_dir)
    assert r.exit_code == 2 and "b.parquet" in r.output and "different schema" in r.output


def test_hostile_rows_become_notes_or_scores(tmp_path, tiny_model_dir):
    qs = ["日本語の問題：りんごは何個？", "🍎 + 🍏 = ? 🤔", "كم عدد التفاح؟", "e\u0301 combining a\u0308",
          "nul\x00inside text", "x" * 200_000, "   \n\t  ", "What is 2+2?"]
    p = tmp_path / "h.parquet"
    pq.write_table(pa.table({"question": qs, "id": [1, 2, 3, 3, 4, 5, 6, 7]}), p)
    r = _score([str(p), "-o", str(tmp_path / "o"), "--max-length", "512"], tiny_model_dir)
    assert r.exit_code == 0, r.output
    assert "duplicate id" in r.output
    rows = load_scores(tmp_path / "o").to_pylist()
    assert len(rows) == len(qs)
    for row in rows[:5] + rows[7:]:
        assert row["score"] is not None, row
    assert rows[5]["truncated"] and rows[5]["n_tokens"] == 512 and rows[5]["score"] is not None
    assert rows[6]["note"] == "empty question" and rows[6]["score"] is None
    assert read_manifest(tmp_path / "o")["duplicate_ids"] == 1


def test_nested_prompts_with_extra_keys_and_no_user(tmp_path, tiny_model_dir):
    t = pa.table({"prompt": [
        [{"role": "system", "content": "s", "name": "x", "weight": 1.0}, {"role": "user", "content": "Why 3?", "name": "u", "weight": 0.5}],
        [{"role": "assistant", "content": "hi", "name": None, "weight": None}],
    ]})
    p = tmp_path / "n.parquet"
    pq.write_table(t, p)
    r = _score([str(p), "-o", str(tmp_path / "o")], tiny_model_dir)
    assert r.exit_code == 0, r.output
    rows = load_scores(tmp_path / "o").to_pylist()
    assert rows[0]["score"] is not None and rows[1]["note"] == "no user message"


def test_unwritable_output(tmp_path, tiny_model_dir, many_rows):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _score([str(many_rows), "-o", str(blocker / "sub")], tiny_model_dir)
    assert r.exit_code == 2 and "cannot write" in r.output
    r = _score([str(many_rows), "-o", str(blocker)], tiny_model_dir)
    assert r.exit_code == 2 and "not a directory" in r.output
