"""The verl 0.8+ entry point (anglerank.integrations.verl_main) against the real verl.

Runs only where verl >= 0.8 is installed (``make verl-test`` builds that
environment); ``make test`` skips this file. What is real here: verl's hydra
config (composed from verl's own ``ppo_trainer.yaml``), ``main_ppo.main`` up
to ``run_ppo``, ``RLHFDataset`` and ``collate_fn``, and for both trainers the
constructor, dataloader, the whole ``fit()`` loop with GRPO advantages and
checkpoint save / resume through ``data.pt``: the legacy ``RayPPOTrainer``
(``trainer.use_v1=False``) with ``DataProto``, and verl 0.9's V1
``PPOTrainerSync`` with its ``ReplayBuffer``, batch balancing (padding rows
included) and a real TransferQueue on a local Ray. What is stubbed: the worker
side that needs accelerators and a rollout server (rollout generation,
log-probs, the actor update, weight sync), so the rewards come from a fixed
"verifier" instead of a model.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")
if importlib.util.find_spec("verl.experimental.dataset") is not None:
    pytest.skip("verl < 0.8 has data.sampler.class_path (tests/integration/test_integrations_verl.py)", allow_module_level=True)

from verl import DataProto  # noqa: E402
from verl.trainer import main_ppo  # noqa: E402
from verl.trainer.ppo.ray_trainer import Role  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402

from anglerank.curriculum.samplers.gainrl import GaussianRankSampler  # noqa: E402
from anglerank.integrations import verl_main  # noqa: E402
from anglerank.integrations.verl import GainRLSampler  # noqa: E402
from helpers import (  # noqa: E402 - after the skip
    BATCH, GAIN, K_EFF, N_RESP, N_ROWS, SEED, correct, expected_delta, make_tokenizer, ranks_and_scores,
    write_ranked_parquet,
)

EPOCHS = 3
STEPS = EPOCHS * K_EFF // BATCH  # 6 steps of 4 prompts


@pytest.fixture(autouse=True)
def _no_flash_attn(monkeypatch):
    """verl 0.8's _update_actor converts the batch to the workers' no-padding form with flash_attn (CUDA
    only); the stub workers do not read it, so skip the conversion there (verl 0.9 runs it on CPU)."""
    if verl.__version__.startswith("0.8") and importlib.util.find_spec("flash_attn") is None:
        monkeypatch.setattr("verl.trainer.ppo.ray_trainer.left_right_2_no_padding", lambda td: td)


@pytest.fixture()
def ranked(tmp_path):
    return write_ranked_parquet(tmp_path)


def verl_config(ranked, ckpt, *extra):
    """verl's own ppo_trainer config with the overrides a user would pass (plus the entry point's)."""
    from hydra import compose, initialize_config_dir

    args = verl_main.overrides([
        "algorithm.adv_estimator=grpo", f"data.train_files={ranked}", f"data.val_files={ranked}",
        f"data.train_batch_size={BATCH}", "data.max_prompt_length=64", f"data.seed={SEED}",
        *[f"+data.gainrl.{k}={v}" for k, v in GAIN.items()],
        f"actor_rollout_ref.rollout.n={N_RESP}", f"trainer.total_epochs={EPOCHS}", "trainer.device=cpu",
        "trainer.balance_batch=False", "trainer.val_before_train=False", "trainer.test_freq=-1",
        "trainer.logger=[console]", f"trainer.default_local_dir={ckpt}",
        *(["trainer.use_v1=False"] if hasattr(main_ppo, "TaskRunnerV1") else []), *extra,
    ], has_v1=hasattr(main_ppo, "TaskRunnerV1"))
    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir, version_base=None):
        return compose("ppo_trainer", overrides=args)


class Workers:
    """The worker side of verl's trainer, stubbed: rollouts scored by the fixed verifier."""

    def __init__(self):
        self.ranks, _ = ranks_and_scores()
        self.steps: list[list[int]] = []  # prompt rows of each step, as rolled out

    def generate_sequences(self, gen):  # async_rollout_manager; gen is repeated n times, interleaved
        rows = np.array([int(e["index"]) for e in gen.non_tensor_batch["extra_info"]])
        self.steps.append(rows[::N_RESP].tolist())
        n, p, r = len(rows), 4, 3
        scores = torch.zeros(n, r)
        scores[:, -1] = torch.tensor([float(correct(row, j % N_RESP, self.ranks)) for j, row in enumerate(rows)])
        tensors = {"prompts": torch.ones(n, p, dtype=torch.long), "responses": torch.ones(n, r, dtype=torch.long),
                   "input_ids": torch.ones(n, p + r, dtype=torch.long),
                   "attention_mask": torch.ones(n, p + r, dtype=torch.long),
                   "position_ids": torch.arange(p + r).repeat(n, 1), "rm_scores": scores}
        return DataProto.from_dict(tensors=tensors, non_tensors={"multi_modal_inputs": np.array([{}] * n)},
                                   meta_info={"timing": {}})

    def update_actor(self, batch_td):  # actor_rollout_wg: what verl's _update_actor reads back
        from tensordict import TensorDict
        from verl.utils import tensordict_utils as tu

        out = TensorDict({}, batch_size=[])
        tu.assign_non_tensor(out, metrics={"mfu": 0.0})
        return out

    # actor_rollout_wg, checkpoint_manager, resource_pool_manager
    def save_checkpoint(self, *args, **kwargs):
        pass

    def load_checkpoint(self, *args, **kwargs):
        pass

    def update_weights(self, *args):
        pass

    def sleep_replicas(self):
        pass

    def get_n_gpus(self):
        return 1


def make_trainer(cfg, workers):
    base = verl_main.trainer_class()

    class Trainer(base):
        def _compute_old_log_prob(self, batch):
            shape = batch.batch["responses"].shape
            return DataProto.from_dict({"old_log_probs": torch.zeros(shape), "entropys": torch.zeros(shape)}), 0.0

        def _update_actor(self, batch):
            self.actor_updates = getattr(self, "actor_updates", 0) + 1
            return super()._update_actor(batch)

    tok = make_tokenizer()
    trainer = Trainer(
        config=cfg, tokenizer=tok, role_worker_mapping={Role.ActorRollout: object}, resource_pool_manager=workers,
        train_dataset=RLHFDataset(data_files=[cfg.data.train_files], tokenizer=tok, config=cfg.data),
        val_dataset=RLHFDataset(data_files=[cfg.data.val_files], tokenizer=tok, config=cfg.data),
        collate_fn=collate_fn,
    )
    trainer.actor_rollout_wg = trainer.async_rollout_manager = trainer.checkpoint_manager = workers
    return trainer


def test_overrides_force_what_the_curriculum_needs():
    from anglerank.errors import UserError

    has_v1 = hasattr(main_ppo, "TaskRunnerV1")
    out = verl_main.overrides(["data.train_batch_size=4"], has_v1=has_v1)
    assert "data.dataloader_num_workers=0" in out and not any("use_v1" in a for a in out)  # verl's choice
    with pytest.raises(UserError, match="data.dataloader_num_workers=2"):
        verl_main.overrides(["data.dataloader_num_workers=2"], has_v1=has_v1)
    with pytest.raises(UserError, match="no data.sampler hook"):
        verl_main.overrides(["data.sampler.class_path=pkg://anglerank.integrations.verl"], has_v1=has_v1)


def test_main_runs_verls_main_with_our_task_runner(ranked, tmp_path, monkeypatch):
    """verl's hydra main composes the config and starts run_ppo with the swapped TaskRunner."""
    calls = []
    monkeypatch.setattr(main_ppo, "run_ppo", lambda config, task_runner_class=None: calls.append(
        (config, task_runner_class)))
    try:
        from verl.trainer import main_ppo_v0 as runner_module
    except ImportError:
        runner_module = main_ppo
    monkeypatch.setattr(runner_module, "TaskRunner", runner_module.TaskRunner)  # undone after the test
    if hasattr(main_ppo, "TaskRunnerV1"):
        monkeypatch.setattr(main_ppo, "TaskRunnerV1", main_ppo.TaskRunnerV1)
    monkeypatch.setattr("sys.argv", ["verl_main"])
    verl_main.main(["algorithm.adv_estimator=grpo", f"data.train_files={ranked}", f"data.val_files={ranked}",
                    "+data.gainrl.subset_size=8", "trainer.device=cpu", "actor_rollout_ref.model.path=unused",
                    "data.train_batch_size=4", "trainer.n_gpus_per_node=1",
                    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
                    f"hydra.run.dir={tmp_path}/hydra"])
    (config, runner), = calls
    assert config.data.dataloader_num_workers == 0 and config.data.gainrl.subset_size == 8
    legacy = runner_module.TaskRunner  # verl 0.8's run_ppo reads main_ppo.TaskRunner itself
    assert getattr(legacy, "__ray_actor_class__", legacy).__name__ == "GainRLTaskRunner"
    if hasattr(main_ppo, "TaskRunnerV1"):  # verl 0.9's current trainer is the default, and swapped too
        assert config.trainer.use_v1 is True and runner is main_ppo.TaskRunnerV1
        assert runner.__ray_actor_class__.__name__ == "GainRLTaskRunnerV1"


def test_fit_runs_gainrl_epochs_in_the_real_trainer(ranked, tmp_path):
    cfg = verl_config(ranked, tmp_path / "ckpt")
    workers = Workers()
    trainer = make_trainer(cfg, workers)
    assert isinstance(trainer.train_dataloader.sampler, GainRLSampler)
    assert len(trainer.train_dataloader) == K_EFF // BATCH and trainer.total_training_steps == STEPS
    trainer.fit()

    assert len(workers.steps) == STEPS and trainer.actor_updates == STEPS
    ranks, scores = ranks_and_scores()
    ref = GaussianRankSampler(N_ROWS, K_EFF, seed=SEED, **{k: v for k, v in GAIN.items() if k != "subset_size"})
    mu = 0.0
    per_epoch = K_EFF // BATCH
    for t in range(EPOCHS):
        rows = sum(workers.steps[t * per_epoch:(t + 1) * per_epoch], [])
        assert ranks[rows].tolist() == ref.draw().tolist(), f"epoch {t}"
        rec = trainer.gainrl_sampler.curriculum.epochs[t]
        acc = np.mean([correct(r, k, ranks) for r in rows for k in range(N_RESP)])
        ang = float(np.mean(scores[rows]))
        assert rec["completions"] == K_EFF * N_RESP and rec["accuracy"] == pytest.approx(acc)
        assert rec["mu"] == pytest.approx(mu) and rec["delta"] == pytest.approx(expected_delta(acc, ang))
        mu += expected_delta(acc, ang)
        ref.update(acc, ang)


@pytest.mark.parametrize("stop", [1, 2, 3, 4])  # mid-epoch and epoch ends (verl skips data.pt at those)
def test_resume_from_verl_checkpoint_matches_uninterrupted(ranked, tmp_path, stop):
    full = Workers()
    uninterrupted = make_trainer(verl_config(ranked, tmp_path / "full"), full)
    uninterrupted.fit()

    ckpt = tmp_path / "ckpt"
    first = Workers()  # stops after `stop` steps; fit() saves the last step's checkpoint
    make_trainer(verl_config(ranked, ckpt, f"trainer.total_training_steps={stop}", f"trainer.save_freq={stop}"),
                 first).fit()
    assert os.path.exists(ckpt / f"global_step_{stop}" / "data.pt")

    resumed_workers = Workers()
    resumed = make_trainer(verl_config(ranked, ckpt, "trainer.resume_mode=auto"), resumed_workers)
    resumed.fit()
    assert first.steps + resumed_workers.steps == full.steps
    assert resumed.gainrl_sampler.curriculum.epochs == uninterrupted.gainrl_sampler.curriculum.epochs
    assert resumed.gainrl_sampler.state_dict() == uninterrupted.gainrl_sampler.state_dict()


def test_critic_warmup_steps_update_through_on_batch_end(ranked, tmp_path):
    """Steps without an actor update still reach the curriculum (verl's on_batch_end hook)."""
    workers = Workers()
    trainer = make_trainer(verl_config(ranked, tmp_path / "ckpt", "trainer.critic_warmup=3"), workers)
    trainer.fit()
    assert trainer.actor_updates == STEPS - 2  # steps 1 and 2 are warmup steps (critic_warmup > step)
    epochs = trainer.gainrl_sampler.curriculum.epochs
    assert [e["completions"] for e in epochs[:2]] == [K_EFF * N_RESP] * 2


def test_task_runner_run_builds_our_trainer(ranked, tmp_path, monkeypatch):
    """verl's own TaskRunner.run (in-process here, a Ray actor in a real run) builds GainRLPPOTrainer."""
    from transformers import Qwen2Config

    model = tmp_path / "tiny-model"  # config + tokenizer only: run() reads them, the workers load weights
    Qwen2Config(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, architectures=["Qwen2ForCausalLM"]).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    built = []
    real_trainer_class = verl_main.trainer_class

    def recording_trainer_class():
        class Recorded(real_trainer_class()):
            def init_workers(self):  # needs Ray and accelerators
                built.append(self)

            def fit(self):
                pass

        return Recorded

    monkeypatch.setattr(verl_main, "trainer_class", recording_trainer_class)
    try:
        from verl.trainer import main_ppo_v0 as runner_module
    except ImportError:
        runner_module = main_ppo
    runner = verl_main.task_runner_class(runner_module.TaskRunner)
    base = getattr(runner, "__ray_actor_class__", runner)  # the class Ray would run in its actor
    cfg = verl_config(ranked, tmp_path / "ckpt", f"actor_rollout_ref.model.path={model}", "trainer.n_gpus_per_node=1",
                      "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                      "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                      "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2")
    # run() rebinds its global RayPPOTrainer; monkeypatch puts verl's back after the test
    verl_globals = base.__mro__[1].run.__globals__  # verl's TaskRunner.run
    monkeypatch.setitem(verl_globals, "RayPPOTrainer", verl_globals["RayPPOTrainer"])
    base().run(cfg)
    (trainer,) = built
    assert isinstance(trainer.train_dataloader.sampler, GainRLSampler)
    assert len(trainer.train_dataloader) == K_EFF // BATCH and trainer.total_training_steps == STEPS


# ------------------------------------------------------------- verl 0.9's V1 trainer (trainer.use_v1=True)

needs_v1 = pytest.mark.skipif(
    not hasattr(main_ppo, "TaskRunnerV1") or importlib.util.find_spec("transfer_queue") is None,
    reason="verl 0.9's V1 trainer (and its TransferQueue dependency)")
MINI_BATCH = 3  # prompts per PPO mini-batch: 4 x 3 responses per step is not a multiple of 3 x 3, so verl pads


@pytest.fixture(scope="module")
def transfer_queue():
    """A local Ray with verl's TransferQueue (controller and one storage unit), as TaskRunnerV1.run starts it."""
    import ray
    import transfer_queue as tq

    env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    # logical CPUs: the controller and storage unit each reserve one, and mostly wait
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}})
    yield tq
    tq.close()
    ray.shutdown()
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def v1_config(ranked, ckpt, *extra):
    """verl's own config with the V1 trainer (verl 0.9's default) and the entry point's overrides."""
    from hydra import compose, initialize_config_dir

    args = verl_main.overrides([
        "algorithm.adv_estimator=grpo", f"data.train_files={ranked}", f"data.val_files={ranked}",
        f"data.train_batch_size={BATCH}", "data.max_prompt_length=64", f"data.seed={SEED}",
        *[f"+data.gainrl.{k}={v}" for k, v in GAIN.items()],
        f"actor_rollout_ref.rollout.n={N_RESP}", f"actor_rollout_ref.actor.ppo_mini_batch_size={MINI_BATCH}",
        f"trainer.total_epochs={EPOCHS}", "trainer.device=cpu", "trainer.val_before_train=False",
        "trainer.test_freq=-1", "trainer.logger=[console]", f"trainer.default_local_dir={ckpt}", *extra,
    ], has_v1=True)
    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir, version_base=None):
        return compose("ppo_trainer", overrides=args)


class V1Workers(Workers):
    """The worker side of the V1 trainer, stubbed: the agent loop writes each prompt's N_RESP trajectories to
    the TransferQueue as verl's AgentLoopWorkerTQ does, scored by the fixed verifier; log-probs are zeros."""

    _dispatch_info = {"actor": [0]}  # one data-parallel rank, for _balance_batch
    reward_loop_worker_handles = ()  # rewards come with the rollout (no colocated reward model)

    def __init__(self, tq):
        super().__init__()
        self.tq = tq

    def generate_sequences(self, batch):  # agent_loop_manager: batch holds the step's prompts, with uids
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict

        rows = [int(i) for i in batch["index"]]
        self.steps.append(rows)
        step = int(batch["global_steps"])
        for uid, row in zip(list(batch["uid"]), rows):
            keys, fields, tags = [], [], []
            for j in range(N_RESP):
                p, r = 4, 3 + j
                scores = torch.zeros(r)
                scores[-1] = float(correct(row, j, self.ranks))
                prompts, responses = torch.ones(p, dtype=torch.long), torch.full((r,), 2, dtype=torch.long)
                keys.append(f"{uid}_{j}_0")
                fields.append({"uid": uid, "prompts": prompts, "responses": responses,
                               "response_mask": torch.ones(r, dtype=torch.long), "rm_scores": scores,
                               "rollout_log_probs": torch.zeros(r),
                               "input_ids": torch.cat([prompts, responses]),
                               "attention_mask": torch.ones(p + r, dtype=torch.long),
                               "position_ids": torch.arange(p + r), "num_turns": 2})
                tags.append({"status": "success", "prompt_len": p, "response_len": r, "seq_len": p + r,
                             "global_steps": step, "min_global_steps": step - 1, "max_global_steps": step - 1})
            self.tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(fields), tags=tags,
                                 partition_id="train")
            self.tq.kv_put(key=uid, partition_id="train", tag={"status": "finished"})

    def compute_log_prob(self, batch):  # actor_rollout_wg: log-probs and entropies into the queue
        mask = self.tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                    select_fields=["response_mask"])["response_mask"]
        zeros = torch.nested.as_nested_tensor([m.float() * 0 for m in mask.unbind()], layout=torch.jagged)
        from tensordict import TensorDict

        self.tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                             fields=TensorDict({"log_probs": zeros, "entropy": zeros}, batch_size=len(batch)))
        return batch

    def update_actor(self, batch):
        self.updates = getattr(self, "updates", 0) + 1
        return {"metrics": {"mfu": 0.0}}


def make_v1_trainer(cfg, workers):
    """The GAIN-RL V1 trainer set up as its init() would, with the stub workers in place of Ray's."""
    trainer = verl_main.v1_trainer_class()(cfg)
    trainer.tokenizer, trainer.processor = make_tokenizer(), None
    trainer._init_dataloader()
    trainer._init_dump_executor()
    trainer.actor_rollout_wg = trainer.checkpoint_manager = trainer.resource_pool_manager = workers
    trainer.reward_loop_manager = workers
    trainer._load_checkpoint()
    return trainer


@needs_v1
def test_v1_fit_runs_gainrl_epochs(ranked, tmp_path, transfer_queue):
    workers = V1Workers(transfer_queue)
    trainer = make_v1_trainer(v1_config(ranked, tmp_path / "ckpt"), workers)
    assert isinstance(trainer.train_dataloader.sampler, GainRLSampler)
    assert trainer.steps_per_epoch == K_EFF // BATCH and trainer.total_training_steps == STEPS
    assert trainer.config.actor_rollout_ref.actor.optim.total_training_steps == STEPS  # the LR horizon too
    trainer.fit(workers)

    assert len(workers.steps) == STEPS and workers.updates == STEPS
    ranks, scores = ranks_and_scores()
    ref = GaussianRankSampler(N_ROWS, K_EFF, seed=SEED, **{k: v for k, v in GAIN.items() if k != "subset_size"})
    mu, per_epoch = 0.0, K_EFF // BATCH
    for t in range(EPOCHS):
        rows = sum(workers.steps[t * per_epoch:(t + 1) * per_epoch], [])
        assert ranks[rows].tolist() == ref.draw().tolist(), f"epoch {t}"
        rec = trainer.gainrl_sampler.curriculum.epochs[t]
        acc = np.mean([correct(r, k, ranks) for r in rows for k in range(N_RESP)])
        ang = float(np.mean(scores[rows]))
        # every response once: verl's padding rows (4 x 3 is not a multiple of 3 x 3) are not counted
        assert rec["completions"] == K_EFF * N_RESP and rec["accuracy"] == pytest.approx(acc)
        assert rec["mu"] == pytest.approx(mu) and rec["delta"] == pytest.approx(expected_delta(acc, ang))
        mu += expected_delta(acc, ang)
        ref.update(acc, ang)


@needs_v1
@pytest.mark.parametrize("stop", [1, 2])  # mid-epoch and an epoch's end
def test_v1_resume_from_checkpoint_matches_uninterrupted(ranked, tmp_path, transfer_queue, stop):
    full = V1Workers(transfer_queue)
    uninterrupted = make_v1_trainer(v1_config(ranked, tmp_path / "full"), full)
    uninterrupted.fit(full)

    ckpt = tmp_path / "ckpt"
    first = V1Workers(transfer_queue)
    make_v1_trainer(v1_config(ranked, ckpt, f"trainer.total_training_steps={stop}", f"trainer.save_freq={stop}"),
                    first).fit(first)
    assert os.path.exists(ckpt / f"global_step_{stop}" / "data.pt")

    later = V1Workers(transfer_queue)
    resumed = make_v1_trainer(v1_config(ranked, ckpt, "trainer.resume_mode=auto"), later)
    assert resumed.global_steps == stop
    resumed.fit(later)
    assert first.steps + later.steps == full.steps
    assert resumed.gainrl_sampler.curriculum.epochs == uninterrupted.gainrl_sampler.curriculum.epochs
    assert resumed.gainrl_sampler.state_dict() == uninterrupted.gainrl_sampler.state_dict()


@needs_v1
def test_v1_refuses_modes_that_fetch_prompts_ahead(ranked, tmp_path):
    from anglerank.errors import UserError

    for bad in ("trainer.v1.trainer_mode=colocate_async", "algorithm.filter_groups.enable=True",
                "trainer.v1.sampler.sync_refill_failed_groups=True"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            verl_main.overrides([bad], has_v1=True)
    assert verl_main.overrides(["trainer.use_v1=False", "algorithm.filter_groups.enable=True"], has_v1=True)
    cfg = v1_config(ranked, tmp_path / "ckpt")  # a config file may set it too: the trainer checks
    cfg.trainer.v1.trainer_mode = "separate_async"
    with pytest.raises(UserError, match="trainer.v1.trainer_mode=separate_async"):
        verl_main.v1_trainer_class()(cfg)


@needs_v1
def test_v1_task_runner_builds_our_trainer_for_the_run(ranked, tmp_path, monkeypatch):
    """verl's own TaskRunnerV1.run (in-process here, a Ray actor in a real run) builds the GAIN-RL trainer from
    the registry's sync slot, and verl's class is back in the slot afterwards."""
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import trainer_base

    built = []

    class Built(Exception):
        pass

    real_class = verl_main.v1_trainer_class

    def recording_class():
        class Recorded(real_class()):
            def __init__(self, config):
                built.append(type(self).__mro__[1].__name__)
                raise Built  # the rest needs accelerators

        return Recorded

    monkeypatch.setattr(verl_main, "v1_trainer_class", recording_class)
    monkeypatch.setattr(tq, "init", lambda *a, **k: None)  # run() starts verl's queue; not needed here
    monkeypatch.setattr(tq, "close", lambda *a, **k: None)
    verl_sync = trainer_base.TRAINER_REGISTRY["sync"]
    base = verl_main.v1_task_runner_class(main_ppo.TaskRunnerV1).__ray_actor_class__
    with pytest.raises(Built):
        base().run(v1_config(ranked, tmp_path / "ckpt"))
    assert built == ["GainRLPPOTrainerV1"] and trainer_base.TRAINER_REGISTRY["sync"] is verl_sync
