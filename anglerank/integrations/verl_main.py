"""GAIN-RL in verl 0.8 and later: ``python -m anglerank.integrations.verl_main <verl overrides>``.

Why this exists: verl 0.8 removed the curriculum hook that
:class:`anglerank.integrations.verl.GainRLSampler` plugs into on verl 0.5 to
0.7 (``data.sampler.class_path``; ``verl/experimental/dataset/sampler.py`` is
gone and ``create_rl_sampler`` builds only a random or sequential sampler).
What verl 0.8 and 0.9 still have, and what this entry point uses:

- ``RayPPOTrainer(..., train_sampler=...)`` (``verl/trainer/ppo/ray_trainer.py``):
  the trainer's dataloader iterates the sampler it is given;
- ``fit()`` calls ``train_dataset.on_batch_end(batch=batch)`` after every
  step but the last, with the step's ``DataProto`` (rewards included);
- ``main_ppo``'s hydra ``main`` and its ``TaskRunner`` (verl 0.8:
  ``verl/trainer/main_ppo.py``; verl 0.9: ``verl/trainer/main_ppo_v0.py``,
  the trainer of ``trainer.use_v1=False``), which builds the trainer as
  ``RayPPOTrainer(...)`` by that global name.

So ``main`` runs verl's own ``main`` with every flag verl knows, after
swapping in a ``TaskRunner`` subclass whose ``run`` makes that name refer to
:func:`trainer_class`'s ``RayPPOTrainer`` subclass. The subclass gives the
dataloader a ``GainRLSampler`` (same options, ``+data.gainrl.*``), hands it
each step's batch right after the actor update (before ``fit()`` saves that
step's checkpoint, so a resume continues exactly; ``on_batch_end`` covers
critic-warmup steps, which have no actor update), and restores the curriculum
on a resume from a checkpoint taken at an epoch's end (verl 0.8+ skips the
dataloader state there, which would restart the curriculum at ``mu0``).

verl 0.9's default trainer (``trainer.use_v1=True``) is not supported: it
takes no sampler, fetches prompts ahead of training for its replay buffer and
keeps step batches in a TransferQueue, so there is no step-by-step place for
the update; this entry point sets ``trainer.use_v1=False``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from anglerank.errors import UserError

__all__ = ["main", "overrides", "task_runner_class", "trainer_class"]


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
    if has_v1:  # verl 0.9+: only the RayPPOTrainer (use_v1=False) takes a sampler
        v1 = given.get("trainer.use_v1")
        if v1 is None:
            out.append("trainer.use_v1=False")
        elif v1.lower() != "false":
            raise UserError(f"trainer.use_v1={v1}: GAIN-RL runs verl's RayPPOTrainer (trainer.use_v1=False); "
                            "the V1 trainer has no sampler argument")
    return out


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
    args = overrides(args, has_v1=hasattr(main_ppo, "TaskRunnerV1"))
    # verl's main reads this module attribute when it starts the runner (0.8: run_ppo's default, 0.9: main)
    runner_module.TaskRunner = task_runner_class(runner_module.TaskRunner)
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
