"""GAIN-RL in verl 0.8 and later: ``python -m anglerank.integrations.verl_main <verl overrides>``.

Why this exists: verl 0.8 removed the curriculum hook that
:class:`anglerank.integrations.verl.GainRLSampler` plugs into on verl 0.5 to
0.7 (``data.sampler.class_path``; ``verl/experimental/dataset/sampler.py`` is
gone and ``create_rl_sampler`` builds only a random or sequential sampler).
``main`` runs verl's own hydra ``main`` (every flag verl knows) after swapping
in ``TaskRunner`` subclasses that build a GAIN-RL trainer; verl picks which
trainer runs from its config, as always.

verl 0.9's current trainer (``trainer.use_v1=True``, verl's default;
``verl/trainer/ppo/v1``): ``TaskRunnerV1.run`` builds the class registered for
``trainer.v1.trainer_mode`` (``TRAINER_REGISTRY``). Our runner puts
:func:`v1_trainer_class`, a ``PPOTrainerSync`` subclass, in the ``sync`` slot
for the run (and puts verl's back after it). The subclass gives the train
dataloader a ``GainRLSampler``, counts verl's steps per epoch by the GAIN-RL
subset instead of the data set, and after each ``step()`` (the actor update
done, before ``fit()`` saves the step's checkpoint, so a resume continues
exactly) reads the step's rewards from the TransferQueue and hands them to the
sampler. Only the sync mode fits: it fetches a step's prompts at the start of
that step, after the previous update; the async modes, DAPO's
``algorithm.filter_groups`` and ``sync_refill_failed_groups`` fetch prompts
ahead or mid-step, past the window's move, and are refused.

verl 0.8, and 0.9 with ``trainer.use_v1=False`` (deprecated by verl):
``RayPPOTrainer(..., train_sampler=...)`` (``verl/trainer/ppo/ray_trainer.py``),
built by ``main_ppo``'s ``TaskRunner`` (0.9: ``main_ppo_v0.py``) by that global
name; our runner makes the name refer to :func:`trainer_class`'s subclass. It
gives the dataloader a ``GainRLSampler`` (same options, ``+data.gainrl.*``),
hands it each step's batch right after the actor update (``on_batch_end``
covers critic-warmup steps, which have no actor update), and restores the
curriculum on a resume from a checkpoint taken at an epoch's end (verl 0.8+
skips the dataloader state there, which would restart the curriculum at ``mu0``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

from anglerank.errors import UserError

__all__ = ["main", "overrides", "step_rewards", "task_runner_class", "trainer_class", "v1_conflict",
           "v1_task_runner_class", "v1_trainer_class"]


def _split(arg: str) -> tuple[str, str | None]:
    """``+data.x=1`` -> (``data.x``, ``"1"``); hydra flags such as ``--config-name`` -> (arg, None)."""
    if arg.startswith("-") or "=" not in arg:
        return arg, None
    key, value = arg.split("=", 1)
    return key.lstrip("+~"), value.strip()


def overrides(args: list[str], *, has_v1: bool) -> list[str]:
    """The user's hydra overrides plus the settings GAIN-RL needs; a conflicting one is a UserError."""
    given = dict(_split(a) for a in args)
    for key in given:
        if key.startswith("data.sampler."):
            raise UserError(f"{key}: verl 0.8+ has no data.sampler hook; this entry point adds the sampler "
                            "itself, so drop data.sampler.* (GAIN-RL options go under +data.gainrl.)")
    out = list(args)
    # worker processes would fetch the next epoch's prompts before the curriculum's update
    workers = given.get("data.dataloader_num_workers")
    if workers is None:
        out.append("data.dataloader_num_workers=0")
    elif workers != "0":
        raise UserError(f"data.dataloader_num_workers={workers}: GAIN-RL needs 0 (each epoch's prompts are "
                        "drawn after the previous epoch's rewards)")
    if has_v1 and str(given.get("trainer.use_v1", "true")).lower() != "false":
        problem = v1_conflict(given.get)
        if problem:
            raise UserError(problem)
    return out


def v1_conflict(value: Callable[[str], Any]) -> str | None:
    """Why a V1 config cannot run GAIN-RL (``value(key)`` reads a setting, None when unset), else None."""
    mode = value("trainer.v1.trainer_mode")
    if mode not in (None, "sync"):
        return (f"trainer.v1.trainer_mode={mode}: GAIN-RL draws a step's prompts after the previous step's "
                "update, which only verl's sync mode does (the async modes fetch prompts ahead); use "
                "trainer.v1.trainer_mode=sync")
    for key in ("algorithm.filter_groups.enable", "trainer.v1.sampler.sync_refill_failed_groups"):
        if str(value(key)).lower() == "true":
            return (f"{key}=True: its refills fetch extra prompts in the middle of a step, past the epoch's "
                    "subset, before the window moves; GAIN-RL on verl's V1 trainer runs without it")
    return None


def step_rewards(batch: Any, reward_key: str | None = None) -> np.ndarray:
    """One reward per response of a V1 step (a TransferQueue ``KVBatchMeta``), padding rows left out.

    The V1 trainer keeps the token-level rewards in the TransferQueue as ``rm_scores`` (its
    ``token_level_scores``), summed here over tokens; another ``reward_key`` names a field the rollout
    wrote (a tensor summed the same way, or one value per response, e.g. ``acc``).
    """
    import torch
    import transfer_queue as tq

    field = "rm_scores" if reward_key in (None, "token_level_scores") else reward_key
    keys = [k for k, tag in zip(batch.keys, batch.tags) if not tag.get("is_padding", False)]
    data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=[field])
    if field not in data.keys():
        raise UserError(f"the step's TransferQueue entries have no reward field {field!r} "
                        "(+data.gainrl.reward_key names it)")
    value = data[field]
    if isinstance(value, torch.Tensor):
        rows = value.unbind() if value.is_nested else list(value)
        return np.asarray([float(r.double().sum()) for r in rows], dtype=np.float64)
    return np.asarray([np.nan if v is None else float(v) for v in list(value)], dtype=np.float64)


def v1_trainer_class() -> type:
    """verl 0.9's ``PPOTrainerSync`` (the V1 trainer's sync mode) drawing GAIN-RL epochs (verl imported on call)."""
    from omegaconf import OmegaConf, open_dict
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.v1 import PPOTrainerSync

    from anglerank.integrations.verl import GainRLSampler

    class GainRLPPOTrainerV1(PPOTrainerSync):
        """PPOTrainerSync whose train dataloader draws GAIN-RL epochs (``data.gainrl.*``)."""

        def __init__(self, config):
            problem = v1_conflict(lambda key: OmegaConf.select(config, key))
            if problem:
                raise UserError(problem)
            super().__init__(config)

        def _init_dataloader(self):
            super()._init_dataloader()
            verl_loader = self.train_dataloader
            self.gainrl_sampler = GainRLSampler(self.train_dataset, self.config.data)
            self.train_dataloader = StatefulDataLoader(
                dataset=self.train_dataset, batch_size=verl_loader.batch_size, num_workers=0, drop_last=True,
                collate_fn=verl_loader.collate_fn, sampler=self.gainrl_sampler)
            # verl counts an epoch as a pass over the data set; one GAIN-RL epoch is one subset
            data, trainer = self.config.data, self.config.trainer
            self.steps_per_epoch = len(self.gainrl_sampler) // data.train_batch_size
            self.total_training_steps = trainer.total_training_steps or self.steps_per_epoch * trainer.total_epochs
            with open_dict(self.config):  # the LR schedules' horizon counts optimiser updates, as verl's own
                for name in ("actor_rollout_ref.actor.optim", "critic.optim"):
                    optim = OmegaConf.select(self.config, name)
                    if optim is not None:
                        optim.total_training_steps = self.total_training_steps * self.parameter_sync_step

        def step(self, metrics: dict, timing_raw: dict):
            batch = super().step(metrics, timing_raw)
            # After the actor update, before fit() saves this step's checkpoint (with the sampler in
            # data.pt): a resume continues exactly.
            self.gainrl_sampler.observe(step_rewards(batch, self.gainrl_sampler.reward_key))
            if self.gainrl_sampler.mu is not None:
                metrics["gainrl/mu"] = float(self.gainrl_sampler.mu)
            return batch

    return GainRLPPOTrainerV1


def trainer_class() -> type:
    """verl's ``RayPPOTrainer`` with the GAIN-RL sampler (verl imported on call)."""
    import torch
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from anglerank.integrations.verl import GainRLSampler

    class GainRLPPOTrainer(RayPPOTrainer):
        """RayPPOTrainer whose train dataloader draws GAIN-RL epochs (``data.gainrl.*``)."""

        def _create_dataloader(self, train_dataset, val_dataset, collate_fn, train_sampler=None):
            if train_dataset is None:  # verl's TaskRunner always passes it; the sampler needs its rows
                raise UserError("GainRLPPOTrainer needs train_dataset")
            self.gainrl_sampler = GainRLSampler(train_dataset, self.config.data)
            self._gainrl_updated = False
            super()._create_dataloader(train_dataset, val_dataset, collate_fn, self.gainrl_sampler)
            previous = getattr(train_dataset, "on_batch_end", None)

            def on_batch_end(batch: Any) -> None:  # fit() calls this after each step but the last
                if previous is not None:
                    previous(batch=batch)
                if not self._gainrl_updated:  # a critic-warmup step: no actor update, so no update yet
                    self.gainrl_sampler.update(batch)
                self._gainrl_updated = False

            train_dataset.on_batch_end = on_batch_end

        def _update_actor(self, batch):
            output = super()._update_actor(batch)
            # Here rather than in on_batch_end: fit() saves the step's checkpoint after this call, so
            # the saved curriculum has the step's rewards and a resume continues exactly.
            self.gainrl_sampler.update(batch)
            self._gainrl_updated = True
            return output

        def _load_checkpoint(self):
            result = super()._load_checkpoint()
            folder = self._resumed_folder()
            steps = len(self.train_dataloader)
            # verl 0.8+ skips data.pt when the checkpoint ends an epoch (its samplers would yield an
            # empty epoch); the curriculum state is in there, and GainRLSampler starts a full new epoch
            if folder and self.global_steps % steps == 0 and os.path.exists(os.path.join(folder, "data.pt")):
                state = torch.load(os.path.join(folder, "data.pt"), weights_only=False)
                self.train_dataloader.load_state_dict(state)
            return result

        def _resumed_folder(self) -> str | None:
            """The checkpoint folder verl's ``_load_checkpoint`` resumed from, else None."""
            trainer = self.config.trainer
            if trainer.resume_mode == "disable" or not self.global_steps:
                return None
            if trainer.resume_mode == "resume_path":
                return os.path.abspath(trainer.resume_from_path)
            return os.path.abspath(os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}"))

    return GainRLPPOTrainer


def task_runner_class(verl_runner: Any) -> Any:
    """A subclass of verl's ``TaskRunner`` (a Ray actor class in 0.9, a plain class in 0.8) using our trainer."""
    actor = hasattr(verl_runner, "__ray_actor_class__")
    base = verl_runner.__ray_actor_class__ if actor else verl_runner

    class GainRLTaskRunner(base):
        def run(self, config):
            # Runs in the Ray actor's own process. verl's run() builds the trainer by the global name
            # RayPPOTrainer (with train_sampler=); Ray may have shipped run() by value with its own
            # globals, so set the name where run() itself looks it up.
            base.run.__globals__["RayPPOTrainer"] = trainer_class()
            return super().run(config)

    if not actor:
        return GainRLTaskRunner
    import ray

    return ray.remote(GainRLTaskRunner)


def v1_task_runner_class(verl_runner: Any) -> Any:
    """A subclass of verl 0.9's ``TaskRunnerV1`` (a Ray actor class) whose sync trainer is GAIN-RL's."""
    import ray

    base = verl_runner.__ray_actor_class__

    class GainRLTaskRunnerV1(base):
        def run(self, config):
            # Runs in the Ray actor's own process. run() builds TRAINER_REGISTRY[trainer_mode]; the registry
            # refuses a second class under a name, so the sync slot is swapped for the run and put back.
            from verl.trainer.ppo.v1 import trainer_base

            registry = trainer_base.TRAINER_REGISTRY
            verl_sync = registry["sync"]
            registry["sync"] = v1_trainer_class()
            try:
                return super().run(config)
            finally:
                registry["sync"] = verl_sync

    return ray.remote(GainRLTaskRunnerV1)


def main(argv: list[str] | None = None) -> None:
    """Run verl's PPO ``main`` (hydra overrides in ``argv``) with the GAIN-RL trainer."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        import verl
        from verl.trainer import main_ppo
    except ImportError as exc:
        raise UserError(f"verl is not importable ({exc}); pip install 'verl>=0.8'") from None
    from anglerank.integrations.verl import GainRLSampler

    if GainRLSampler.VERL_BASE:
        raise UserError(f"verl {verl.__version__} has the data.sampler hook: run verl.trainer.main_ppo with "
                        "data.sampler.class_path=pkg://anglerank.integrations.verl (this entry point is for 0.8+)")
    try:
        from verl.trainer import main_ppo_v0 as runner_module  # 0.9: RayPPOTrainer's TaskRunner moved here
    except ImportError:
        runner_module = main_ppo
    has_v1 = hasattr(main_ppo, "TaskRunnerV1")
    args = overrides(args, has_v1=has_v1)
    # verl's main reads these module attributes when it starts the runner it chose by trainer.use_v1 (0.8:
    # run_ppo's default; 0.9: main), so both are swapped: the choice may come from a config file
    runner_module.TaskRunner = task_runner_class(runner_module.TaskRunner)
    if has_v1:
        main_ppo.TaskRunnerV1 = v1_task_runner_class(main_ppo.TaskRunnerV1)
    sys.argv = [sys.argv[0], *args]
    main_ppo.main()


if __name__ == "__main__":
    # Import the module by name so Ray pickles the runner class by reference, not as __main__.
    from anglerank.integrations import verl_main

    try:
        verl_main.main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
