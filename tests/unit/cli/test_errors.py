"""The error contract: a user's mistake is one line and exit 2; a bug is visibly internal.

Before, any ValueError became "error: ..." with exit 2, so a bug in anglerank looked
like the user's fault and lost its traceback.
"""

from __future__ import annotations

import gc
import sys

import pytest
import typer
from typer.testing import CliRunner

from anglerank.cli.common import user_errors
from anglerank.data.reader import InputError
from anglerank.errors import Interrupted, MissingExtra, UserError

runner = CliRunner()


def _app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @user_errors
    def go():
        raise exc

    @app.command()
    def other():  # a second command, so typer keeps `go` as a subcommand
        pass

    return app


@pytest.mark.parametrize("exc", [UserError("bad --x"), InputError("no such file: a.parquet"),
                                 MissingExtra("--plot needs matplotlib: pip install 'anglerank[plot]'")])
def test_user_errors_are_one_line_exit_2(exc):
    res = runner.invoke(_app(exc), ["go"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(exc) in lines[0]
    assert "Traceback" not in res.output and "internal" not in res.output


@pytest.mark.parametrize("exc", [ValueError("shapes do not match"), KeyError("row"), TypeError("x")])
def test_unexpected_exceptions_are_internal_errors(exc, monkeypatch):
    monkeypatch.delenv("ANGLERANK_DEBUG", raising=False)
    res = runner.invoke(_app(exc), ["go"])
    assert res.exit_code == 1
    assert "internal error" in res.output and type(exc).__name__ in res.output
    assert "ANGLERANK_DEBUG=1" in res.output


def test_debug_variable_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("ANGLERANK_DEBUG", "1")
    res = runner.invoke(_app(ValueError("shapes do not match")), ["go"])
    assert res.exit_code != 0 and isinstance(res.exception, ValueError)


def test_interrupted_exits_with_its_code():
    res = runner.invoke(_app(Interrupted(143, "stopped; resume with --resume")), ["go"])
    assert res.exit_code == 143 and "--resume" in res.output


@pytest.mark.parametrize("exc", [typer.Abort(), EOFError()])
def test_entry_point_reports_an_abort_as_interrupted(exc, monkeypatch, capsys):
    """typer >= 0.29 moved Abort out of its vendored click; the entry point crashed on it."""
    from anglerank import cli

    def abort(**_):
        if isinstance(exc, EOFError):  # typer turns an EOF at a prompt into Abort itself
            raise typer.Abort() from exc
        raise exc

    monkeypatch.setattr(cli, "app", abort)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_user_error_is_a_value_error_for_api_callers():
    assert issubclass(UserError, ValueError) and issubclass(InputError, UserError)


# --------------------------------------------------------------- files a user hands in, named in one line

def _one_line_error(res, *needles):
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "internal error" not in lines[0], res.output
    for n in needles:
        assert n in lines[0], res.output


def test_model_folder_problems_are_one_line_naming_the_file(tmp_path, tiny_model_dir):
    import shutil

    from anglerank.cli import app

    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name == "config.json" or f.suffix == ".safetensors":
            shutil.copy(f, no_tok / f.name)
    _one_line_error(runner.invoke(app, ["info", "--model", str(no_tok)]), str(no_tok), "no tokenizer")
    bad_cfg = tmp_path / "bad_cfg"
    shutil.copytree(tiny_model_dir, bad_cfg)
    (bad_cfg / "config.json").write_text("{not json")
    _one_line_error(runner.invoke(app, ["info", "--model", str(bad_cfg)]), "config.json", "not valid JSON")


def test_non_utf8_toml_is_named(tmp_path):
    from anglerank.cli import app

    cfg = tmp_path / "run.toml"
    cfg.write_bytes(b'lr = "\xff"\n')
    _one_line_error(runner.invoke(app, ["train", "x.parquet", "-o", str(tmp_path / "r"), "--config", str(cfg)]),
                    "run.toml", "not UTF-8")


# ------------------------------------------------- the collector around start-up (the CLI entry point)

@pytest.fixture
def restore_gc():
    yield
    gc.enable()
    gc.unfreeze()


def _run_main(argv, monkeypatch) -> dict:
    """cli.main() on ``argv``; what the collector was doing when the command ended."""
    from anglerank import cli

    at_exit = {}
    monkeypatch.setattr(cli, "freeze_at_exit",
                        lambda: at_exit.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count()))
    monkeypatch.setattr(sys, "argv", ["anglerank", *argv])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 0
    return at_exit


@pytest.mark.parametrize("quiet", [False, True])
def test_score_and_train_collect_again_once_work_begins(quiet, tiny_model_dir, questions_parquet, tmp_path,
                                                        monkeypatch, restore_gc):
    """The entry point pauses the collector for start-up; a command that never resumed it would
    run for hours without collecting cycles."""
    common = ["-m", str(tiny_model_dir), "--dtype", "float32"] + (["--quiet"] if quiet else [])
    at_exit = _run_main(["score", str(questions_parquet), "-o", str(tmp_path / "scores"), *common], monkeypatch)
    assert at_exit["enabled"] and at_exit["frozen"] > 0
    gc.unfreeze()
    at_exit = _run_main(["train", str(questions_parquet), "-o", str(tmp_path / "run"), *common, "--device", "cpu",
                         "--reward", "math", "--num-generations", "2", "--max-new-tokens", "4",
                         "--prompts-per-step", "2", "--subset-size", "2", "--epochs", "1"], monkeypatch)
    assert at_exit["enabled"] and at_exit["frozen"] > 0


def test_validate_progress_resumes_collecting(restore_gc):
    from anglerank.cli import validate as cli_validate

    for quiet in (False, True):
        gc.disable()
        with cli_validate._progress(quiet) as tick:
            tick("score", 1, 2)
        assert gc.isenabled()


def test_commands_without_a_model_never_pause_the_collector(tmp_path, monkeypatch, restore_gc):
    """The pause covers model loading only: rank, sample, inspect and the rest run with the collector on."""
    from anglerank import cli

    calls = []
    monkeypatch.setattr(cli, "pause_gc_for_startup", lambda: calls.append(1))
    monkeypatch.setattr(cli, "freeze_at_exit", lambda: None)
    for argv in (["rank", "--help"], ["inspect", "--help"], ["merge", "--help"], ["--version"]):
        monkeypatch.setattr(sys, "argv", ["anglerank", *argv])
        with pytest.raises(SystemExit):
            cli.main()
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["anglerank", "score", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [1]
