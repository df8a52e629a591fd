"""Each setting is declared once, as a dataclass field; its commands' options, the checks and the keys a
resumed run must match are derived from the fields.

Spec: every field with an option appears in the ``--help`` of every command that offers it (flags derived
from the field name, both forms for a flag); a field marked as changing results is among the keys that
``--resume`` compares, and changing it on resume is refused, naming it; ``anglerank train`` holds the
settings it shares by inheritance, so the field objects are the very ones declared in their home class.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields

import pytest
from typer.testing import CliRunner

from anglerank import settings
from anglerank.cli import app
from anglerank.curriculum.config import CurriculumConfig, CurriculumSettings
from anglerank.data import manifest
from anglerank.data.writer import OutputError
from anglerank.errors import UserError
from anglerank.passrate import SETTINGS_KEYS as PASSRATE_KEYS
from anglerank.rollouts import AnswerSettings, PassRateOptions, SamplingSettings, ValidateOptions
from anglerank.scoring.options import AngleSettings, InputColumns, ModelSettings, PromptFormat, ScoreOptions
from anglerank.train.config import TrainConfig

runner = CliRunner()


def _with_options(cls, only=None, skip=()):
    return [f for f in fields(cls) if f.metadata.get("cli", True) and (only is None or f.name in only)
            and f.name not in skip]


# command -> the fields it offers as options
COMMANDS = {
    "score": _with_options(InputColumns) + _with_options(ScoreOptions),
    "validate": _with_options(ValidateOptions) + _with_options(InputColumns)
    + _with_options(ScoreOptions, skip=("device_map",)),
    "passrate": _with_options(PassRateOptions) + _with_options(InputColumns) + _with_options(ModelSettings)
    + _with_options(PromptFormat) + _with_options(ScoreOptions, only=("max_length",)),
    "train": _with_options(TrainConfig),
    "sample": _with_options(CurriculumSettings, only=("ranking", "mu0", "sigma", "wrap")),
}


def _help_flags(command: str) -> set[str]:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"})  # click's plain layout
    assert res.exit_code == 0, res.output
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", res.output))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_field_is_an_option_of_its_commands(command):
    shown = _help_flags(command)
    for f in COMMANDS[command]:
        flags = f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)
        missing = [x for x in flags if x not in shown]
        if settings.base_type(f.type) is bool:  # a switch has its negative form too
            missing += [x for x in (f"--no-{flags[0][2:]}",) if x not in shown]
        assert not missing, f"{command} --help lacks {missing} (field {f.name})"


def test_option_help_is_the_field_help():
    res = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "2000"})
    text = " ".join(res.output.split())
    for f in _with_options(ScoreOptions):
        assert " ".join(f.metadata["help"].split())[:60] in text, f.name


def test_fields_that_change_scores_are_the_keys_resume_and_merge_check():
    result = {f.name for f in fields(ScoreOptions) if f.metadata.get("result")}
    assert result and result <= set(manifest.SETTINGS_KEYS) <= set(manifest.RESUME_KEYS)
    # every other field cannot change a score: the model is checked by its weights' fingerprint instead
    assert {f.name for f in fields(ScoreOptions)} - result == {"model", "device", "device_map"}
    assert "weights_fingerprint" in manifest.SETTINGS_KEYS
    passrate_result = {f.name for f in fields(PassRateOptions) if f.metadata.get("result")}
    assert passrate_result == {f.name for f in fields(PassRateOptions)}
    assert passrate_result <= set(PASSRATE_KEYS)


def _changed(f, base):
    """A valid value of field ``f`` that differs from ``base``, derived from its declaration."""
    allowed = settings.choices_of(f)
    if allowed:
        return next(c for c in allowed if c not in (base, "auto"))
    kind = settings.base_type(f.type)
    if kind is bool:
        return not base
    if kind is list:
        return [0]
    if kind is int:
        return (base or 256) + 1
    if kind is float:
        return (base or 0.0) + 0.5
    return "Answer briefly."


RESULT_FIELDS = [f for f in fields(ScoreOptions) if f.metadata.get("result")]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anglerank.scoring.run import run_score

    d = tmp_path_factory.mktemp("settings")
    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(5)]
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": q}] for q in qs]}), d / "q.parquet")
    base = ScoreOptions(model=str(tiny_model_dir), dtype="float32", device="cpu")
    run_score([str(d / "q.parquet")], d / "out", options=base)
    return d, base


@pytest.mark.parametrize("f", RESULT_FIELDS, ids=[f.name for f in RESULT_FIELDS])
def test_changing_a_result_field_on_resume_is_refused_naming_it(scored, f, one_thread):
    from anglerank.scoring.run import run_score

    d, base = scored
    value = _changed(f, getattr(base, f.name))
    changed = ScoreOptions(**{**{g.name: getattr(base, g.name) for g in fields(ScoreOptions)},
                              "w_inter": None if f.name == "estimator" else base.w_inter, f.name: value})
    with pytest.raises(OutputError, match=rf"settings differ.*\b{f.name}:"):
        run_score([str(d / "q.parquet")], d / "out", options=changed, resume=True)


SHARED = (CurriculumSettings, AngleSettings, PromptFormat, InputColumns, ModelSettings, AnswerSettings,
          SamplingSettings)


def test_train_inherits_shared_settings_instead_of_copying_them():
    train = {f.name: f for f in fields(TrainConfig)}
    for cls in SHARED:
        for f in fields(cls):
            assert train[f.name] is f, f"TrainConfig.{f.name} is a copy of {cls.__name__}.{f.name}"
    # the curriculum's own config is the same fields plus the two its callers set
    assert [f.name for f in fields(CurriculumConfig)] == [f.name for f in fields(CurriculumSettings)] + ["shuffle",
                                                                                                        "seed"]


def test_train_scores_with_every_scoring_setting_it_holds():
    cfg = TrainConfig(train_data=["x.parquet"], estimator="gainrl-code", w_intra=2.0, w_inter=3.0, site="residual",
                      code_prefix_tokens=7, prefix_cache=False, preset="gainrl", layer=-2, score_batch_tokens=99)
    opt = cfg.score_options(dtype="float32", device="cpu")
    for f in fields(ScoreOptions):
        if hasattr(cfg, f.name) and f.name not in ("dtype", "device"):
            assert getattr(opt, f.name) == getattr(cfg, f.name), f.name
    assert (opt.layers, opt.batch_tokens, opt.max_length) == ([-2], 99, cfg.max_prompt_length)


@pytest.mark.parametrize("cls", [ScoreOptions, PassRateOptions, ValidateOptions, TrainConfig])
def test_every_declared_range_and_choice_is_checked_naming_the_flag(cls):
    base = {"train_data": ["x.parquet"]} if cls is TrainConfig else {}
    for f in fields(cls):
        valid, allowed = f.metadata.get("valid"), settings.choices_of(f)
        if allowed:
            bad = "no-such-choice"
        elif valid in (">= 1", "> 0"):
            bad = 0
        elif valid == ">= 0":
            bad = -1
        elif valid is not None:
            bad = float("nan")
        else:
            continue
        with pytest.raises(UserError, match=re.escape(settings.flag(f))):
            cls(**base, **{f.name: [bad] if settings.base_type(f.type) is list else bad})


def test_a_field_default_is_its_options_default():
    for f in fields(ScoreOptions):
        if f.metadata.get("cli", True) and f.default is not MISSING and f.metadata.get("parse") is None:
            (p,) = settings.parameters(ScoreOptions, only=[f.name])
            assert p.default == f.default, f.name


def test_a_train_resume_may_change_exactly_the_settings_declared_resumable(tmp_path):
    from anglerank.train.checkpoint import resume_config
    from anglerank.train.config import dump_toml

    base = TrainConfig(train_data=["x.parquet"], output_dir=str(tmp_path))
    (tmp_path / "config.toml").write_text(dump_toml(base))
    for f in fields(TrainConfig):
        if not f.metadata.get("cli", True) or f.name == "output_dir":
            continue
        value = _changed(f, getattr(base, f.name))
        if f.metadata.get("parse") is not None:  # rank units: an int is ranks
            value = 3
        if f.name == "report_to":
            value = ["tensorboard"]
        if f.metadata.get("resume"):
            assert getattr(resume_config(tmp_path, {f.name: value}), f.name) == value, f.name
        else:
            with pytest.raises(UserError, match=re.escape(f"--{f.name.replace('_', '-')} (")):
                resume_config(tmp_path, {f.name: value})
