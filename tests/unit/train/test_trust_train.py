"""`anglerank train`, `export` and `plot` trust only their own files, validate a run's saved state, and
report every failure as one clear line.

Organised by family, each test a hostile case: symbolic links planted in a run directory,
crafted run state on ``--resume``, a full disk, option values, signals before the step loop,
and `export`. Tiny in-process models keep each training to well under a second; the cases
that need a real process (a signal, a full disk) run ``anglerank`` as one.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.settings import base_type as _base_type
from anglerank.train import checkpoint
from anglerank.train.config import TrainConfig
from anglerank.train.metrics import Jsonl, read_metrics
from helpers import HASH_REWARD, can_make_small_disk, cli_argv, env, on_small_disk, one_error_line

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

PRECIOUS = "the user's own file, not anglerank's\n" * 50


def _args(data, run, model_dir, reward, *extra):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--reward", reward, "--num-generations", "2", "--max-new-tokens", "3", "--prompts-per-step", "2",
            "--subset-size", "4", "--sampler", "uniform", "--epochs", "1", "--quiet", *extra]


def _resume(run, *extra):
    return runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--quiet", *extra])


@pytest.fixture
def trained(tmp_path, tiny_model_dir, questions_parquet):
    """A finished one-epoch run (two steps, checkpoint step-0000002)."""
    (tmp_path / "rw.py").write_text(HASH_REWARD)
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r"))
    assert res.exit_code == 0, res.output
    return run


def _victim(tmp_path) -> Path:
    p = tmp_path / "elsewhere" / "precious.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_text(PRECIOUS)
    return p


def _umask_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# ============================================================================ symlinks

def test_resume_never_writes_through_a_linked_metrics_file(tmp_path, trained):
    victim = _victim(tmp_path)
    (trained / "metrics.jsonl").unlink()
    (trained / "metrics.jsonl").symlink_to(victim)
    one_error_line(_resume(trained), "metrics.jsonl", "symbolic link")
    assert victim.read_text() == PRECIOUS


@pytest.mark.parametrize("name", ["subsets.jsonl", "config.toml", "checkpoints/LATEST"])
def test_resume_refuses_other_linked_run_files(tmp_path, trained, name):
    victim = _victim(tmp_path)
    victim.write_text((trained / name).read_text())
    (trained / name).unlink()
    (trained / name).symlink_to(victim)
    before = victim.read_text()
    one_error_line(_resume(trained), name.split("/")[-1], "symbolic link")
    assert victim.read_text() == before


def test_a_linked_checkpoints_folder_is_not_followed(tmp_path, trained):
    """checkpoints/ linked to another run's: resuming would train on from that run's weights and write there."""
    other = tmp_path / "other-checkpoints"
    (trained / "checkpoints").rename(other)
    (trained / "checkpoints").symlink_to(other)
    listing = sorted(p.name for p in other.iterdir())
    one_error_line(_resume(trained), "checkpoints", "symbolic link")
    assert sorted(p.name for p in other.iterdir()) == listing


def test_a_linked_lock_file_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, questions_parquet):
    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".anglerank.lock").symlink_to(victim)
    (tmp_path / "rw.py").write_text(HASH_REWARD)
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r"))
    one_error_line(res, ".anglerank.lock", "symbolic link")
    assert victim.read_text() == PRECIOUS
    assert not (run / "config.toml").exists()


def test_a_fresh_run_removes_a_planted_link_without_touching_its_target(tmp_path, tiny_model_dir,
                                                                         questions_parquet):
    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(victim)
    (tmp_path / "rw.py").write_text(HASH_REWARD)
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r"))
    assert res.exit_code == 0, res.output
    assert victim.read_text() == PRECIOUS
    assert not (run / "metrics.jsonl").is_symlink() and read_metrics(run, "epoch")


def test_plot_never_writes_through_a_link_at_its_temporary_name(tmp_path, trained):
    pytest.importorskip("matplotlib")
    victim = _victim(tmp_path)
    (trained / f".curves.png.{os.getpid()}.tmp.png").symlink_to(victim)
    res = runner.invoke(app, ["plot", str(trained)])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == PRECIOUS
    assert (trained / "curves.png").is_file() and not (trained / "curves.png").is_symlink()


def test_export_refuses_a_linked_output_folder(tmp_path, trained):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)
    one_error_line(runner.invoke(app, ["export", str(trained), "-o", str(link), "--overwrite"]), "symbolic link")
    assert list(target.iterdir()) == []


# ============================================================================ crafted run state

def _no_nul(path: Path) -> bool:
    return b"\0" not in path.read_bytes()


def test_a_shortened_metrics_file_is_never_padded(trained):
    """Cut mid-line, as an editor or a partial copy would: the resume keeps whole lines and warns."""
    metrics = trained / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])
    res = runner.invoke(app, ["train", "--resume", str(trained), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "metrics.jsonl" in " ".join(res.output.split())
    assert _no_nul(metrics)
    lines = metrics.read_text().splitlines()
    assert all(json.loads(x) for x in lines)  # whole lines only: what `plot` reads
    assert [r["epoch"] for r in read_metrics(trained, "epoch")][-1] == 2


def _edit_state(run: Path, edit) -> Path:
    ck = checkpoint.latest_checkpoint(run)
    state = json.loads((ck / "trainer_state.json").read_text())
    edit(state)
    (ck / "trainer_state.json").write_text(json.dumps(state))
    return ck


def test_huge_log_sizes_never_extend_a_log(trained):
    _edit_state(trained, lambda s: s["log_sizes"].update(metrics=10 ** 12, subsets=10 ** 12))
    before = (trained / "metrics.jsonl").stat().st_size
    res = _resume(trained)
    assert res.exit_code == 0, res.output
    for name in ("metrics.jsonl", "subsets.jsonl"):
        assert (trained / name).stat().st_size < before + 100_000 and _no_nul(trained / name)
    assert [r["epoch"] for r in read_metrics(trained, "epoch")] == [1, 2]


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["log_sizes"].update(metrics=1e12), "log_sizes.metrics"),
    (lambda s: s["log_sizes"].update(subsets=-5), "log_sizes.subsets"),
    (lambda s: s.pop("order"), "'order'"),
    (lambda s: s["run"].update(global_step="two"), "global_step"),
    (lambda s: s["run"].update(surprise=1), "surprise"),
])
def test_crafted_trainer_state_is_one_line_naming_the_file(trained, edit, fragment):
    _edit_state(trained, edit)
    one_error_line(_resume(trained), "trainer_state.json", fragment)


def test_trainer_state_that_is_not_json_is_one_line(trained):
    ck = checkpoint.latest_checkpoint(trained)
    (ck / "trainer_state.json").write_bytes(b"\x89PNG not json at all")
    one_error_line(_resume(trained), str(ck / "trainer_state.json"), "not JSON")


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_a_damaged_checkpoint_tensor_file_is_one_line(trained, name):
    ck = checkpoint.latest_checkpoint(trained)
    (ck / name).write_bytes(b"garbage")
    one_error_line(_resume(trained), name, "damaged")


def test_latest_never_leads_out_of_the_run(tmp_path, trained, tiny_model_dir, questions_parquet):
    other = tmp_path / "other"
    res = runner.invoke(app, _args(questions_parquet, other, tiny_model_dir, f"{tmp_path / 'rw.py'}:r",
                                   "--epochs", "2", "--lr", "1e-2"))
    assert res.exit_code == 0, res.output
    foreign = checkpoint.latest_checkpoint(other)
    marker = trained / "checkpoints" / "LATEST"
    for planted in (str(foreign), f"../../other/checkpoints/{foreign.name}", "step-0000009"):
        marker.write_text(planted)
        one_error_line(_resume(trained), "LATEST")
        assert [r["epoch"] for r in read_metrics(trained, "epoch")] == [1]  # nothing was trained or rewritten


# ============================================================================ full disk

def test_a_log_write_on_a_full_disk_is_one_error_and_leaves_no_torn_line():
    from anglerank.errors import UserError

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(UserError, match="cannot write /dev/full: No space left on device"):
        Jsonl(Path("/dev/full")).write({"type": "step", "loss": 0.5})


@pytest.mark.skipif(not can_make_small_disk(), reason="no unprivileged user+mount namespace for a small tmpfs")
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, trained):
    """The run is copied onto a small tmpfs, filled up but for room for the log lines, and resumed there: the
    checkpoint cannot be written. The state it leaves is copied back and resumed with room to spare."""
    out = tmp_path / "out"
    out.mkdir()
    script = f"""
    cp -r {trained} $DISK/run
    dd if=/dev/zero of=$DISK/fill bs=4k 2>/dev/null
    truncate -s -96K $DISK/fill             # room for the log lines, not for the weights
    $ANGLERANK train --resume $DISK/run --epochs 2 --quiet 2> {out}/err; echo $? > {out}/rc
    cp -r $DISK/run {out}/run
    """
    res = on_small_disk(tmp_path / "disk", 1200, script)
    assert res.returncode == 0, res.stdout + res.stderr
    full = subprocess.CompletedProcess([], int((out / "rc").read_text()), "", (out / "err").read_text())
    line = one_error_line(full, "cannot write checkpoint file", "step-0000004", "No space left on device")
    assert "step-0000002" in line and "--resume" in line
    run = out / "run"
    assert not (run / ".anglerank.lock").exists()
    assert (run / "checkpoints" / "LATEST").read_text() == "step-0000002"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step-0000002"]  # no temporaries
    json.loads((run / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())  # intact
    res = _resume(run)  # room again
    assert res.exit_code == 0, res.output
    assert (run / "checkpoints" / "LATEST").read_text() == "step-0000004"
    assert [r["epoch"] for r in read_metrics(run, "epoch")] == [1, 2] and _no_nul(run / "metrics.jsonl")


# ============================================================================ option values

@pytest.mark.parametrize("flag, value", [
    ("--save-every", "0"), ("--lr", "inf"), ("--lr", "nan"), ("--adam-beta1", "1.5"), ("--adam-beta2", "-0.1"),
    ("--reward-weight", "nan"), ("--max-prompt-length", "1"), ("--adam-eps", "0"), ("--weight-decay", "inf"),
    ("--temperature", "nan"), ("--seed", "-1"), ("--sigma", "0"), ("--correct-threshold", "inf"),
])
def test_bad_option_values_are_refused_before_any_work(tmp_path, tiny_model_dir, questions_parquet, flag, value):
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, "math", f"{flag}={value}"))
    line = one_error_line(res, flag)
    assert "--max-length" not in line
    assert not run.exists()  # nothing started


def test_every_numeric_setting_declares_its_range():
    for f in fields(TrainConfig):
        if _base_type(f.type) in (int, float) or f.name == "reward_weight":
            assert f.metadata.get("valid"), f"{f.name} has no declared range"


# ============================================================================ signals

KILL_AT_IMPORT = "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)\n" + HASH_REWARD
KILL_AT_FIRST_CALL = ("import os, signal, time\n"
                      "def r(prompts, completions, **k):\n"
                      "    os.kill(os.getpid(), signal.SIGTERM)\n"
                      "    time.sleep(5)\n"
                      "    return [0.0] * len(completions)\n")


@pytest.mark.parametrize("when, reward", [("model and data set-up", KILL_AT_IMPORT),
                                          ("initial eval", KILL_AT_FIRST_CALL)])
def test_sigterm_before_the_step_loop_exits_143_releases_the_lock_and_resumes_afresh(
        tmp_path, tiny_model_dir, questions_parquet, when, reward):
    rw, run = tmp_path / "rw.py", tmp_path / "run"
    rw.write_text(reward)
    res = subprocess.run(cli_argv(*_args(questions_parquet, run, tiny_model_dir, f"{rw}:r", "--eval-data",
                                         questions_parquet, "--eval-limit", "2")),
                         env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 143, (when, res.returncode, res.stderr)
    assert "interrupted" in res.stderr and "--resume" in res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert not (run / ".anglerank.lock").exists()
    rw.write_text(HASH_REWARD)
    res = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    assert checkpoint.latest_checkpoint(run) is not None


# ============================================================================ export

def test_export_refuses_a_non_empty_folder_without_overwrite(tmp_path, trained):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"the user": "keeps this"}')
    one_error_line(runner.invoke(app, ["export", str(trained), "-o", str(out)]), str(out), "--overwrite")
    assert json.loads((out / "config.json").read_text()) == {"the user": "keeps this"}
    res = runner.invoke(app, ["export", str(trained), "-o", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text()).get("model_type") == "llama"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")) == []


def test_checkpoint_and_export_weights_follow_the_umask(tmp_path, trained):
    want = _umask_mode()
    ck = checkpoint.latest_checkpoint(trained)
    assert stat.S_IMODE((ck / "model.safetensors").stat().st_mode) == want
    res = runner.invoke(app, ["export", str(trained), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "out" / "model.safetensors").stat().st_mode) == want


@pytest.fixture
def sigterm_is_survivable():
    """Where no handler of anglerank's is installed, a SIGTERM raises here instead of ending the test run."""
    def fail(signum, frame):
        raise RuntimeError("SIGTERM reached no handler of anglerank's")

    old = signal.signal(signal.SIGTERM, fail)
    yield
    signal.signal(signal.SIGTERM, old)


def test_sigterm_during_export_leaves_nothing_half_written(tmp_path, trained, monkeypatch, sigterm_is_survivable):
    from anglerank.model import loading

    real = loading.load_tokenizer

    def terminated_while_writing(path):  # the weights are loaded; SIGTERM arrives now
        os.kill(os.getpid(), signal.SIGTERM)
        return real(path)

    monkeypatch.setattr(loading, "load_tokenizer", terminated_while_writing)
    out = tmp_path / "exported"
    res = runner.invoke(app, ["export", str(trained), "-o", str(out)])
    assert res.exit_code == 143, res.output
    assert "interrupted" in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]


def test_export_survives_the_run_deleting_its_checkpoint(tmp_path, trained, monkeypatch):
    """A run still training with --keep-checkpoints 1 deletes the checkpoint being exported."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from anglerank.model import loading

    ck = checkpoint.latest_checkpoint(trained)
    saved = load_file(str(ck / "model.safetensors"))
    real = loading.load

    def pruned_meanwhile(*a, **k):
        import shutil

        shutil.rmtree(ck, ignore_errors=True)
        return real(*a, **k)

    monkeypatch.setattr(loading, "load", pruned_meanwhile)
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(trained), "-o", str(out)])
    assert res.exit_code == 0, res.output
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, t in saved.items():
        assert (exported[name] == t).all(), name


def test_export_of_a_checkpoint_deleted_while_read_is_one_line(tmp_path, trained, monkeypatch):
    ck = checkpoint.latest_checkpoint(trained)
    real, calls = os.link, []

    def link_then_prune(src, dst, *a, **k):
        calls.append(src)
        if len(calls) == 2:
            import shutil

            shutil.rmtree(ck)
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "link", link_then_prune)
    out = tmp_path / "out"
    one_error_line(runner.invoke(app, ["export", str(ck), "-o", str(out)]), str(ck), "deleted")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
