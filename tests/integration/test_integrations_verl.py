"""GAIN-RL sampler for verl, exercised the way verl's PPO trainer drives it.

verl's trainer loop, reduced to what touches the sampler: a StatefulDataLoader
(torchdata; plain DataLoader when absent) with ``drop_last=True`` iterates the
sampler once per epoch; every batch becomes a DataProto, is repeated ``n``
times (``interleave=True``), gets ``token_level_scores`` (the reward on the
last response token) and goes to ``sampler.update(batch)``; checkpoints hold
``dataloader.state_dict()``.

With verl installed (a version that still has
``verl.experimental.dataset.sampler``, i.e. 0.5 to 0.7) the real DataProto,
RLHFDataset, collate_fn and ``create_rl_sampler`` are used; otherwise a
stand-in with the same attributes (``.batch`` dict of tensors,
``.non_tensor_batch`` dict of numpy arrays).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anglerank.curriculum.samplers.gainrl import GaussianRankSampler
from anglerank.errors import UserError
from anglerank.integrations.verl import GainRLSampler, read_options, response_rewards
from helpers import (
    BATCH, GAIN, K_EFF, N_RESP, N_ROWS, SEED, correct, expected_delta, ranks_and_scores, write_ranked_parquet,
)

try:
    from verl import DataProto
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler

    HAVE_VERL = True
except Exception:  # noqa: BLE001 - absent, or a verl without the curriculum interface
    HAVE_VERL = False

try:
    from torchdata.stateful_dataloader import StatefulDataLoader as Loader

    HAVE_STATEFUL = True
except Exception:  # noqa: BLE001
    from torch.utils.data import DataLoader as Loader

    HAVE_STATEFUL = False


class RowsDataset(torch.utils.data.Dataset):
    """Map-style data with a ``dataframe`` like verl's RLHFDataset; items are row ids."""

    def __init__(self):
        import pyarrow as pa  # verl keeps a datasets.Dataset; any column holder works

        ranks, scores = ranks_and_scores()
        self.dataframe = pa.table({"row": list(range(N_ROWS)), "angle_rank": ranks, "angle_score": scores})

    def __len__(self):
        return len(self.dataframe)

    def __getitem__(self, i):
        return {"row": i}


class FakeDataProto:
    """The attributes of verl's DataProto that the sampler reads."""

    def __init__(self, batch: dict, non_tensor_batch: dict):
        self.batch = batch
        self.non_tensor_batch = non_tensor_batch

    def __len__(self):
        return len(next(iter(self.non_tensor_batch.values())))


def make_batch(rows: list[int], ranks) -> object:
    """A post-reward training batch: each prompt repeated N_RESP times, interleaved."""
    rows_rep = np.repeat(np.asarray(rows), N_RESP)
    resp = np.tile(np.arange(N_RESP), len(rows))
    scores = torch.zeros(len(rows_rep), 6)
    scores[:, -1] = torch.tensor([float(correct(r, k, ranks)) for r, k in zip(rows_rep, resp)])
    non_tensor = {"row": rows_rep.astype(object), "uid": rows_rep.astype(str).astype(object)}
    if HAVE_VERL:
        return DataProto.from_dict(tensors={"token_level_scores": scores}, non_tensors=non_tensor)
    return FakeDataProto({"token_level_scores": scores}, non_tensor)


def data_config(**gainrl):
    cfg = {
        "train_batch_size": BATCH,
        "dataloader_num_workers": 0,
        "seed": SEED,
        "sampler": {"class_path": "pkg://anglerank.integrations.verl", "class_name": "GainRLSampler"},
        "gainrl": {**GAIN, **gainrl},
    }
    if HAVE_VERL:
        from omegaconf import OmegaConf

        return OmegaConf.create(cfg)
    return cfg


def make_loader(sampler, dataset):
    def collate(items):
        return {"row": [it["row"] for it in items]}

    return Loader(dataset=dataset, batch_size=BATCH, num_workers=0, drop_last=True, collate_fn=collate,
                  sampler=sampler)


def run_epochs(sampler, loader, ranks, epochs, *, log=None, stop_after=None, save_before_update=False):
    """verl's fit() loop as far as the sampler sees it; returns the loader state at ``stop_after``."""
    step = 0
    for _ in range(epochs):
        for batch_dict in loader:
            step += 1
            if log is not None:
                log.append(list(batch_dict["row"]))
            batch = make_batch(batch_dict["row"], ranks)
            if stop_after == step and save_before_update:
                return loader.state_dict() if HAVE_STATEFUL else sampler.state_dict()
            if not HAVE_VERL or isinstance(sampler, AbstractCurriculumSampler):
                sampler.update(batch)
            if stop_after == step:
                return loader.state_dict() if HAVE_STATEFUL else sampler.state_dict()
    return None


def test_sampler_is_a_verl_curriculum_sampler():
    if HAVE_VERL:
        assert issubclass(GainRLSampler, AbstractCurriculumSampler) and GainRLSampler.VERL_BASE
    else:
        assert issubclass(GainRLSampler, torch.utils.data.Sampler) and not GainRLSampler.VERL_BASE
    s = GainRLSampler(RowsDataset(), data_config())
    assert len(s) == K_EFF  # 10 rounded down to two batches of 4


def test_epochs_follow_gaussian_and_update_rule_without_lag():
    ranks, scores = ranks_and_scores()
    ds = RowsDataset()
    sampler = GainRLSampler(data_source=ds, data_config=data_config())
    loader = make_loader(sampler, ds)
    assert len(loader) == K_EFF // BATCH
    log: list[list[int]] = []
    run_epochs(sampler, loader, ranks, 3, log=log)

    per_epoch = K_EFF // BATCH
    epochs = [sum(log[i:i + per_epoch], []) for i in range(0, len(log), per_epoch)]
    assert len(epochs) == 3
    ref = GaussianRankSampler(N_ROWS, K_EFF, seed=SEED, **{k: v for k, v in GAIN.items() if k != "subset_size"})
    mu = 0.0
    for t, rows in enumerate(epochs):
        assert ranks[rows].tolist() == ref.draw().tolist(), f"epoch {t} is not the Gaussian draw at mu={mu}"
        acc = np.mean([correct(r, k, ranks) for r in rows for k in range(N_RESP)])
        ang = float(np.mean(scores[rows]))
        rec = sampler.curriculum.epochs[t]
        assert rec["completions"] == K_EFF * N_RESP
        assert rec["accuracy"] == pytest.approx(acc) and rec["angle"] == pytest.approx(ang)
        assert rec["mu"] == pytest.approx(mu)  # epoch t was drawn with the updated mu: no lag
        assert rec["delta"] == pytest.approx(expected_delta(acc, ang))
        mu += expected_delta(acc, ang)
        ref.update(acc, ang)
    assert sampler.mu == pytest.approx(mu) and mu > 0


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_resume_from_dataloader_checkpoint_matches_uninterrupted(stop_after):
    """Checkpoint after step ``stop_after``'s update, restore into fresh objects, finish."""
    ranks, _ = ranks_and_scores()
    full_log: list[list[int]] = []
    ds = RowsDataset()
    full = GainRLSampler(ds, data_config())
    run_epochs(full, make_loader(full, ds), ranks, 3, log=full_log)

    first = GainRLSampler(ds, data_config())
    state = run_epochs(first, make_loader(first, ds), ranks, 3, stop_after=stop_after)
    state = torch.load(_roundtrip(state), weights_only=False)  # verl writes data.pt with torch.save

    resumed = GainRLSampler(RowsDataset(), data_config())
    loader = make_loader(resumed, ds)
    if HAVE_STATEFUL:
        loader.load_state_dict(state)
    else:
        resumed.load_state_dict(state)
    log: list[list[int]] = []
    steps_left = 3 * (K_EFF // BATCH) - stop_after
    # verl resumes at epoch global_step // len(loader): the current epoch's remainder, then new epochs
    epochs_left = 3 - stop_after // (K_EFF // BATCH)
    run_epochs(resumed, loader, ranks, epochs_left, log=log)
    assert log == full_log[stop_after:] and len(log) == steps_left
    assert resumed.curriculum.epochs == full.curriculum.epochs
    assert resumed.state_dict() == full.state_dict()


def test_checkpoint_on_epoch_last_step_before_update_starts_next_epoch():
    """verl saves before calling update(): a checkpoint on an epoch's last step still resumes cleanly."""
    ranks, _ = ranks_and_scores()
    ds = RowsDataset()
    first = GainRLSampler(ds, data_config())
    per_epoch = K_EFF // BATCH
    state = run_epochs(first, make_loader(first, ds), ranks, 2, stop_after=per_epoch, save_before_update=True)
    resumed = GainRLSampler(ds, data_config())
    loader = make_loader(resumed, ds)
    if HAVE_STATEFUL:
        loader.load_state_dict(state)
    else:
        resumed.load_state_dict(state)
    log: list[list[int]] = []
    run_epochs(resumed, loader, ranks, 1, log=log)
    assert len(log) == per_epoch  # a full new epoch, not an empty remainder
    rec = resumed.curriculum.epochs[0]  # epoch 0 closed on resume without its last batch's rewards
    assert rec["completions"] == (per_epoch - 1) * BATCH * N_RESP
    assert resumed.curriculum.epochs[1]["mu"] == pytest.approx(rec["mu_next"])


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_options_keys_precedence_and_typos():
    cfg = {"train_batch_size": 8, "sampler": {"class_path": "x", "class_name": "y", "sigma": 7, "alpha": 3.0},
           "gainrl": {"sigma": 0.25}}
    assert read_options(cfg) == {"sigma": 0.25, "alpha": 3.0}
    with pytest.raises(UserError, match="data.gainrl.sigmma"):
        read_options({"gainrl": {"sigmma": 1}})
    for removed in ("accuracy", "reward_range"):  # replaced by correct_threshold, in either section
        for section in ("gainrl", "sampler"):
            with pytest.raises(UserError, match=f"data.{section}.{removed} was removed.*correct_threshold"):
                read_options({section: {removed: "mean"}})
    # every curriculum setting (one set of names and defaults with `anglerank train`) is an option
    assert read_options({"gainrl": {"wrap": True, "sampler": "uniform", "correct_threshold": 0.5}}) == \
        {"wrap": True, "sampler": "uniform", "correct_threshold": 0.5}
    s = GainRLSampler(RowsDataset(), {"train_batch_size": 4, "gainrl": {"sigma": 0.25, "subset_size": 12}})
    assert s.curriculum.sampler.sigma == pytest.approx(0.25 * N_ROWS)  # fraction of N
    assert len(s) == 12
    s = GainRLSampler(RowsDataset(), {"gen_batch_size": 5, "train_batch_size": 4})
    assert len(s) == 30  # default K=256 capped by N=30, whole batches of gen_batch_size 5
    with pytest.raises(UserError, match="angle_rank"):
        GainRLSampler([{"q": 1}] * 4, {"train_batch_size": 1})
    s = GainRLSampler([{"q": 1}] * 4, {"train_batch_size": 2, "gainrl": {"sampler": "uniform"}})
    assert len(s) == 4 and sorted(iter(s)) == [0, 1, 2, 3]  # the baseline needs no ranking
    s = GainRLSampler(RowsDataset(), {"train_batch_size": 4, "seed": 9, "gainrl": {"wrap": True}})
    cfg = s.curriculum.config
    assert (cfg.seed, cfg.wrap, cfg.correct_threshold, cfg.shuffle) == (9, True, 1.0, True)
    with pytest.raises(UserError, match="unknown sampler"):
        GainRLSampler(RowsDataset(), {"gainrl": {"sampler": "nope"}})


def test_response_rewards_sources_and_correct_threshold():
    ranks, _ = ranks_and_scores()
    batch = make_batch([0, 1], ranks)
    np.testing.assert_array_equal(
        response_rewards(batch), [float(correct(r, k, ranks)) for r in (0, 1) for k in range(N_RESP)]
    )
    fake = FakeDataProto({"token_level_rewards": torch.tensor([[0.0, 0.5], [0.0, 2.0]])},
                         {"acc": np.array([True, None], dtype=object)})
    np.testing.assert_array_equal(response_rewards(fake), [0.5, 2.0])
    np.testing.assert_array_equal(response_rewards(fake, "acc"), [1.0, np.nan])
    with pytest.raises(UserError, match="no reward"):
        response_rewards(fake, "score")

    # correct_threshold: rewards 0.5 and 2.0, correct when >= the threshold
    for threshold, acc in ((0.5, 1.0), (1.0, 0.5), (2.5, 0.0)):
        s = GainRLSampler(RowsDataset(), {"train_batch_size": 2, "gainrl": {
            **GAIN, "subset_size": 2, "correct_threshold": threshold, "reward_key": "token_level_rewards"}})
        rows = list(iter(s))
        assert len(rows) == 2
        s.update(fake)
        assert s.curriculum.epochs[0]["accuracy"] == pytest.approx(acc), threshold
    # a non-tensor reward with an unjudged (None) response: left out of the accuracy
    s = GainRLSampler(RowsDataset(), {"train_batch_size": 2, "gainrl": {**GAIN, "subset_size": 2, "reward_key": "acc"}})
    list(iter(s))
    s.update(fake)
    assert s.curriculum.epochs[0]["accuracy"] == 1.0 and s.curriculum.epochs[0]["completions"] == 1


@pytest.mark.skipif(not HAVE_VERL, reason="verl with verl.experimental.dataset.sampler (0.5-0.7) not installed")
def test_real_verl_create_rl_sampler_and_rlhf_dataset(tmp_path):
    """verl builds the sampler from data.sampler.class_path/class_name over its RLHFDataset."""
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import create_rl_sampler
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from helpers import make_tokenizer

    path = write_ranked_parquet(tmp_path)
    ranks, _ = ranks_and_scores()
    cfg = OmegaConf.create({
        "train_batch_size": BATCH, "max_prompt_length": 64, "dataloader_num_workers": 0, "shuffle": True,
        "prompt_key": "prompt", "return_raw_chat": False, "filter_overlong_prompts": False, "seed": SEED,
        "sampler": {"class_path": "pkg://anglerank.integrations.verl", "class_name": "GainRLSampler"},
        "gainrl": GAIN,
    })
    ds = RLHFDataset(data_files=[str(path)], tokenizer=make_tokenizer(), config=cfg)
    sampler = create_rl_sampler(cfg, ds)
    assert isinstance(sampler, AbstractCurriculumSampler) and type(sampler).__name__ == "GainRLSampler"
    loader = Loader(dataset=ds, batch_size=BATCH, num_workers=0, drop_last=True, collate_fn=collate_fn,
                    sampler=sampler)
    ref = GaussianRankSampler(N_ROWS, K_EFF, seed=SEED, **{k: v for k, v in GAIN.items() if k != "subset_size"})
    for epoch in range(2):
        seen = []
        for batch_dict in loader:
            batch = DataProto.from_single_dict(batch_dict).repeat(repeat_times=N_RESP, interleave=True)
            rows = batch.non_tensor_batch["index"].astype(int)  # extra_info.index == row here
            seen += rows[::N_RESP].tolist()
            reward = torch.zeros(len(batch), 3)
            reward[:, -1] = torch.tensor([float(correct(r, k % N_RESP, ranks)) for k, r in enumerate(rows)])
            batch.batch["token_level_scores"] = reward
            sampler.update(batch=batch)
        assert ranks[seen].tolist() == ref.draw().tolist()
        rec = sampler.curriculum.epochs[epoch]
        ref.update(rec["accuracy"], rec["angle"])
        acc = np.mean([correct(r, k, ranks) for r in seen for k in range(N_RESP)])
        assert rec["accuracy"] == pytest.approx(acc)
    assert sampler.mu == pytest.approx(ref.mu)


def test_verl_main_entry_point_overrides_without_verl():
    """The verl 0.8+ entry point (anglerank.integrations.verl_main): importable without verl; its flags."""
    import subprocess
    import sys

    from anglerank.integrations.verl_main import overrides

    code = "import sys, anglerank.integrations.verl_main; print('verl' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    out = overrides(["+data.gainrl.sigma=0.1", "--config-name=ppo_trainer"], has_v1=True)
    assert out == ["+data.gainrl.sigma=0.1", "--config-name=ppo_trainer", "data.dataloader_num_workers=0"]
    assert overrides(["data.dataloader_num_workers=0"], has_v1=False) == ["data.dataloader_num_workers=0"]
    with pytest.raises(UserError, match="data.dataloader_num_workers=4"):
        overrides(["data.dataloader_num_workers=4"], has_v1=False)
    # verl 0.9's current trainer runs GAIN-RL in its sync mode only; the deprecated one stays available
    assert overrides(["trainer.use_v1=True", "trainer.v1.trainer_mode=sync"], has_v1=True)
    with pytest.raises(UserError, match="trainer.v1.trainer_mode=colocate_async.*sync"):
        overrides(["trainer.v1.trainer_mode=colocate_async"], has_v1=True)
    assert overrides(["trainer.use_v1=False", "trainer.v1.trainer_mode=colocate_async"], has_v1=True)
    with pytest.raises(UserError, match="no data.sampler hook"):
        overrides(["data.sampler.class_name=GainRLSampler"], has_v1=False)
