"""GAIN-RL for TRL: reading the trainer's data set, the config, and the real GRPOTrainer on a tiny model.

The trainer tests run TRL's GRPOTrainer for two GAIN-RL epochs on CPU (a
1-layer Llama, 40 ranked prompts, 8-token completions) with a reward that
depends only on the prompt's rank, so accuracy, angle and the expected ``mu``
can be recomputed by hand and compared with an independent
GaussianRankSampler. The curriculum itself is tested in
tests/unit/curriculum/test_curriculum.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from anglerank.curriculum import DEFAULTS, Curriculum, CurriculumConfig
from anglerank.curriculum.samplers.gainrl import GaussianRankSampler
from anglerank.errors import UserError
from anglerank.integrations.columns import column_values, curriculum_for

N_ROWS = 40
SEED = 3
# absolute rank units so the numbers are easy to follow on 40 rows
GAIN = dict(subset_size=8, mu0=0, sigma=4, step=8, alpha=2.0, beta_acc=0.5, adj_min=-16, adj_max=16)
CORRECT_BELOW = 10  # the reward is 1 for prompts of rank < 10


def ranked_rows(n: int = N_ROWS, seed: int = 0) -> dict:
    """Columns of a ranked data set: rows in random rank order, score falling with rank."""
    ranks = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return {
        "prompt": [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(n)],
        "answer": [str(i + 1) for i in range(n)],
        "angle_rank": ranks,
        "angle_score": 0.9 - ranks / n,
    }


def expected_delta(acc: float, ang: float, g: dict = GAIN) -> float:
    raw = g["step"] * math.tanh(g["alpha"] * (acc - g["beta_acc"])) + g["step"] * math.tanh(g["alpha"] * ang)
    return min(max(raw, g["adj_min"]), g["adj_max"])


# ------------------------------------------------------------ data access and config


def test_column_values_reads_common_containers():
    import importlib.util

    import polars as pl
    import pyarrow as pa

    cols = {"angle_rank": [2, None, 0], "q": ["a", "b", "c"]}
    want = [2.0, np.nan, 0.0]
    holders = [pl.DataFrame(cols), pa.table(cols), cols, [dict(zip(cols, vals)) for vals in zip(*cols.values())]]
    if importlib.util.find_spec("pandas"):
        import pandas as pd

        holders.append(pd.DataFrame(cols))
    if importlib.util.find_spec("datasets") is None:
        pytest.skip("datasets not installed")  # the remaining holders need it
    import datasets

    holders.append(datasets.Dataset.from_dict(cols))
    for h in holders:
        np.testing.assert_array_equal(column_values(h, "angle_rank"), want, err_msg=type(h).__name__)
        assert column_values(h, "missing") is None

    class VerlLike:  # verl's RLHFDataset keeps its rows in .dataframe
        dataframe = datasets.Dataset.from_dict(cols).select([2, 0])

        def __len__(self):
            return 2

    np.testing.assert_array_equal(column_values(VerlLike(), "angle_rank"), [0.0, 2.0])


def test_curriculum_for_needs_ranks_only_when_the_sampler_uses_them():
    cols = ranked_rows()
    unranked = {k: v for k, v in cols.items() if not k.startswith("angle_")}
    cur = curriculum_for(unranked, CurriculumConfig(sampler="uniform", subset_size=8, seed=1), chunk=4)
    assert cur.order.tolist() == list(range(N_ROWS)) and len(set(cur.begin_epoch().tolist())) == 8
    with pytest.raises(UserError, match="no 'angle_rank' column"):
        curriculum_for(unranked, CurriculumConfig())
    with pytest.raises(UserError, match="no 'angle_score' column"):
        curriculum_for({**unranked, "angle_rank": cols["angle_rank"]}, CurriculumConfig())
    cur = curriculum_for({**unranked, "angle_rank": cols["angle_rank"]}, CurriculumConfig(), angle=0.25)
    assert cur.angles is None and cur.angle_default == 0.25
    with pytest.raises(UserError, match="not numeric"):
        curriculum_for({**cols, "angle_rank": ["a"] * N_ROWS}, CurriculumConfig())


def test_config_is_the_curriculum_config_with_correct_threshold():
    from anglerank.integrations.trl import GainRLConfig

    cfg = GainRLConfig()
    assert isinstance(cfg, CurriculumConfig)  # one set of defaults, shared with `anglerank train`
    assert {k: getattr(cfg, k) for k in DEFAULTS if k not in ("seed", "shuffle")} == \
        {k: v for k, v in DEFAULTS.items() if k not in ("seed", "shuffle")}
    assert cfg.seed is None and cfg.shuffle is None  # taken from TRL's args
    cur_cfg = GainRLConfig(correct_threshold=0.5, shuffle=False).curriculum_config(seed=7, shuffle=True)
    assert type(cur_cfg) is CurriculumConfig
    assert (cur_cfg.correct_threshold, cur_cfg.seed, cur_cfg.shuffle) == (0.5, 7, False)
    cur = Curriculum(np.arange(10), cur_cfg.replace(subset_size=2))
    cur.begin_epoch()
    cur.observe([0.0, 0.49, 0.5, 1.0, np.nan])  # reward >= 0.5 is correct; NaN left out
    assert cur.end_epoch()["accuracy"] == 0.5
    for removed in ("accuracy", "reward_threshold", "reward_range"):
        with pytest.raises(UserError, match=f"{removed}.*correct_threshold"):
            GainRLConfig.from_dict({removed: "mean"})
    with pytest.raises(UserError, match="unknown GainRLConfig option 'sigmma'"):
        GainRLConfig.from_dict({"sigmma": 3})
    with pytest.raises(UserError, match="unknown sampler"):
        GainRLConfig(sampler="nope")
    assert GainRLConfig.from_dict({"sigma": 4, "reward_func": "r"}).sigma == 4


def test_repeat_sampler_layout_matches_trl():
    from anglerank.integrations.trl import GainRLRepeatSampler

    cols = ranked_rows()
    make = lambda: GainRLRepeatSampler(  # noqa: E731
        Curriculum.from_ranks(cols["angle_rank"], CurriculumConfig(subset_size=6, seed=SEED, sigma=4), chunk=3),
        mini_repeat_count=2,
        batch_size=3, repeat_count=2,
    )
    a, b = make(), make()
    seq = list(a)
    assert len(seq) == len(a) == 6 * 2 * 2
    assert seq == list(b)  # same seed -> same sequence on every process
    rows = a.curriculum.rows.tolist()
    expected = []
    for chunk in (rows[:3], rows[3:]):
        expected += [i for i in chunk for _ in range(2)] * 2
    assert seq == expected


# ------------------------------------------------------------ real TRL trainer


@pytest.fixture(scope="module")
def trl_env():
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    import torch

    from helpers import make_tokenizer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"datasets": datasets, "tok": make_tokenizer()}
    torch.set_num_threads(n)


class RankReward:
    """Reward 1 for prompts ranked < CORRECT_BELOW; records what it saw."""

    __name__ = "rank_reward"

    def __init__(self):
        self.calls: list[list[int]] = []

    def __call__(self, prompts, completions, angle_rank, **kwargs):
        self.calls.append([int(r) for r in angle_rank])
        return [1.0 if r < CORRECT_BELOW else 0.0 for r in angle_rank]


def make_trainer(env, tmp_path, reward, *, gainrl=None, save_steps=None, rows=None, **overrides):
    from trl import GRPOConfig

    from anglerank.integrations.trl import GainRLConfig, GainRLGRPOTrainer
    from helpers import make_model

    tok = env["tok"]
    ds = env["datasets"].Dataset.from_dict(rows or ranked_rows())
    args = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
        max_completion_length=8, num_train_epochs=2, learning_rate=1e-5, logging_steps=1,
        report_to="none", bf16=False, use_cpu=True, seed=SEED, beta=0.0, disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
    )
    args.update(overrides)
    cfg = GainRLConfig(**{k: v for k, v in GAIN.items()}) if gainrl is None else gainrl
    return GainRLGRPOTrainer(
        model=make_model("llama", vocab_size=len(tok), layers=1, hidden=16), reward_funcs=reward,
        args=GRPOConfig(**args), train_dataset=ds, processing_class=tok, gainrl=cfg,
    )


def split_epochs(calls: list[list[int]], per_epoch: int) -> list[list[int]]:
    """Flatten reward calls (G consecutive copies per prompt) into per-epoch prompt ranks."""
    flat = [r for call in calls for r in call]
    assert all(flat[i] == flat[i + 1] for i in range(0, len(flat), 2)), "num_generations copies not consecutive"
    prompts = flat[::2]
    return [prompts[i:i + per_epoch] for i in range(0, len(prompts), per_epoch)]


def test_grpo_trainer_two_epochs_follow_gaussian_and_update_rule(trl_env, tmp_path):
    reward = RankReward()
    trainer = make_trainer(trl_env, tmp_path, reward)
    trainer.train()
    cols = ranked_rows()
    k = GAIN["subset_size"]

    epochs = split_epochs(reward.calls, k)
    assert len(epochs) == 2 and all(len(e) == k for e in epochs)
    assert all(len(c) == 4 for c in reward.calls)  # 2 prompts x 2 generations per generation batch

    # independent reference: same seed and hyper-parameters, fed the observed accuracy/angle
    ref = GaussianRankSampler(N_ROWS, k, seed=SEED, **{k_: v for k_, v in GAIN.items() if k_ != "subset_size"})
    mu = GAIN["mu0"]
    for t, ranks in enumerate(epochs):
        assert ranks == ref.draw().tolist(), f"epoch {t} did not draw the Gaussian subset around mu={mu}"
        assert max(abs(r - mu) for r in ranks) <= 4 * GAIN["sigma"] + 1
        acc = np.mean([1.0 if r < CORRECT_BELOW else 0.0 for r in ranks])  # all G copies share the reward
        rows = [int(np.flatnonzero(cols["angle_rank"] == r)[0]) for r in ranks]
        ang = float(np.mean(cols["angle_score"][rows]))
        rec = trainer.gainrl.epochs[t]
        assert rec["accuracy"] == pytest.approx(acc) and rec["angle"] == pytest.approx(ang)
        assert rec["completions"] == 2 * k
        assert rec["delta"] == pytest.approx(expected_delta(acc, ang))
        assert rec["mu"] == pytest.approx(mu)
        mu += expected_delta(acc, ang)
        ref.update(acc, ang)
    assert trainer.gainrl.mu == pytest.approx(mu) and mu != GAIN["mu0"]
    logged = [h for h in trainer.state.log_history if "gainrl/mu" in h]
    assert [h["gainrl/mu"] for h in logged] == pytest.approx([e["mu_next"] for e in trainer.gainrl.epochs])
    assert [h["gainrl/accuracy"] for h in logged] == pytest.approx([e["accuracy"] for e in trainer.gainrl.epochs])


def test_grpo_trainer_resume_matches_uninterrupted_run(trl_env, tmp_path):
    full_reward = RankReward()
    full = make_trainer(trl_env, tmp_path / "full", full_reward, save_steps=2)
    full.train()  # 4 steps per epoch, checkpoints at steps 2 (mid epoch), 4 (epoch end), 6, 8
    full_prompts = [r for e in split_epochs(full_reward.calls, GAIN["subset_size"]) for r in e]
    ckpt_root = tmp_path / "full" / "out"
    assert (ckpt_root / "checkpoint-2" / "gainrl_state.json").exists()

    for step in (2, 4):
        reward = RankReward()
        resumed = make_trainer(trl_env, tmp_path / f"resume{step}", reward, save_steps=2)
        resumed.train(resume_from_checkpoint=str(ckpt_root / f"checkpoint-{step}"))
        prompts = [r for call in reward.calls for r in call][::2]
        assert prompts == full_prompts[step * 2:], f"resume from step {step} drew other prompts"
        assert resumed.gainrl.epochs == full.gainrl.epochs
        assert resumed.gainrl.sampler.state_dict() == full.gainrl.sampler.state_dict()


def test_grpo_trainer_accuracy_from_named_reward_function(trl_env, tmp_path):
    from anglerank.integrations.trl import GainRLConfig

    correct = RankReward()

    def format_bonus(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    cfg = GainRLConfig(**GAIN, reward_func="rank_reward", angle=0.0)
    trainer = make_trainer(trl_env, tmp_path, [correct, format_bonus], gainrl=cfg, num_train_epochs=1)
    trainer.train()
    ranks = [r for call in correct.calls for r in call]
    acc = np.mean([r < CORRECT_BELOW for r in ranks])
    rec = trainer.gainrl.epochs[0]
    assert rec["accuracy"] == pytest.approx(acc)  # the 0.5 bonus did not count as "correct"
    assert rec["angle"] == 0.0 and rec["delta"] == pytest.approx(expected_delta(acc, 0.0))


def test_grpo_trainer_needs_ranked_data(trl_env, tmp_path):
    rows = ranked_rows()
    del rows["angle_rank"]
    with pytest.raises(UserError, match="no 'angle_rank' column"):
        make_trainer(trl_env, tmp_path, RankReward(), rows=rows)


def test_grpo_trainer_correctness_from_weighted_sum_and_threshold(trl_env, tmp_path):
    """TRL's weighted sum goes to the curriculum; correct means >= correct_threshold, all-NaN rows left out."""
    import torch

    from anglerank.integrations.trl import GainRLConfig

    def format_bonus(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    cfg = GainRLConfig.from_dict({**GAIN, "correct_threshold": 1.5})
    trainer = make_trainer(trl_env, tmp_path, [RankReward(), format_bonus], gainrl=cfg,
                           reward_weights=[1.0, 2.0])
    trainer.gainrl.begin_epoch()
    nan = float("nan")
    # weighted sums: 2.0, 1.0, dropped, 1.0 (NaN terms count as 0, as in TRL), 1.5
    trainer._gainrl_observe(torch.tensor([[1.0, 0.5], [0.0, 0.5], [nan, nan], [1.0, nan], [0.5, 0.5]]))
    rec = trainer._gainrl_end_epoch()
    assert rec["completions"] == 4 and rec["accuracy"] == pytest.approx(0.5)

