"""GAIN-RL sampling for TRL's ``GRPOTrainer`` (docs/method.md, "The training loop").

This module exists so a TRL user swaps one class to train with GAIN-RL::

    from anglerank.integrations.trl import GainRLConfig, GainRLGRPOTrainer

    trainer = GainRLGRPOTrainer(
        model=..., reward_funcs=..., args=GRPOConfig(...),
        train_dataset=load_dataset("parquet", data_files="ranked.parquet")["train"],
        gainrl=GainRLConfig(subset_size=256),
    )
    trainer.train()

What changes compared with ``GRPOTrainer``:

- the train sampler (``_get_train_sampler``) yields, each epoch, the rows of
  ``subset_size`` prompts drawn without replacement from the Gaussian over
  their ``angle_rank`` positions, in TRL's ``RepeatSampler`` layout: prompts in
  chunks of ``generation_batch_size // num_generations``, each chunk repeated
  ``num_iterations * steps_per_generation`` times, each prompt repeated
  ``num_generations`` times in consecutive positions. The draw uses a private
  generator seeded with ``GainRLConfig.seed`` (default ``args.seed``), so every
  process yields the same sequence, as ``RepeatSampler`` does. An HF "epoch" is
  one pass over this subset, so ``num_train_epochs`` counts GAIN-RL epochs;
- the gathered rewards TRL computes for each training generation batch
  (``_calculate_rewards``, identical on all processes; the weighted sum, or
  the function named by ``reward_func``) go to the
  :class:`anglerank.curriculum.Curriculum`, which counts a completion correct
  when its reward is ``>= correct_threshold`` (default 1.0, the curriculum's
  one rule; NaN rewards are left out);
- at the end of the epoch (``on_epoch_end``), before the next draw, ``mu``
  moves by ``clamp(step tanh(alpha (acc - beta_acc)) + step tanh(alpha ang),
  adj_min, adj_max)`` with ``ang`` the mean of the ``angle`` column
  (``angle_score`` by default) over the epoch's prompts, and stays on the data
  (clamped to the last rank, or with ``wrap=True`` a new pass on a circular
  window that covers both ends equally). ``gainrl/mu``
  (the centre after the move), ``gainrl/accuracy``, ``gainrl/angle`` and
  ``gainrl/delta`` go to the logs. ``sampler="uniform"`` (and the other
  samplers of :mod:`anglerank.curriculum`) work here too;
- checkpoints carry the curriculum (``gainrl_state.json`` in each
  ``checkpoint-*`` folder) and ``train(resume_from_checkpoint=...)`` restores
  it, so a resumed run draws what an uninterrupted one would. Resuming in the
  middle of an epoch replays that epoch's subset (the trainer skips the batches
  already trained) and keeps the accuracy collected so far.

The angle is taken from the ranked data (the scores of the model that ranked
it), not re-measured on the policy during training. TRL is imported only when
``GainRLGRPOTrainer`` is first accessed; ``GainRLMixin`` can be combined with
your own ``GRPOTrainer`` subclass (``class T(GainRLMixin, MyGRPOTrainer)``).
Iterable (streaming) data sets are not supported: sampling by rank needs
random access.

Earlier releases' ``accuracy``, ``reward_threshold`` (reward > 0) and
``reward_range`` options are gone: correctness is ``reward >=
correct_threshold`` everywhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from anglerank.curriculum import Curriculum, CurriculumConfig
from anglerank.errors import MissingExtra, UserError
from anglerank.integrations.columns import curriculum_for

__all__ = [
    "STATE_FILE",
    "GainRLCallback",
    "GainRLConfig",
    "GainRLGRPOTrainer",
    "GainRLMixin",
    "GainRLRepeatSampler",
]

logger = logging.getLogger(__name__)

STATE_FILE = "gainrl_state.json"

# Options of earlier releases, replaced by the curriculum's one correctness rule.
_REMOVED = {
    "accuracy": "the epoch accuracy is always the share of completions with reward >= correct_threshold",
    "reward_threshold": "use correct_threshold (correct means reward >= correct_threshold; default 1.0)",
    "reward_range": "use correct_threshold (correct means reward >= correct_threshold; default 1.0)",
}


@dataclass
class GainRLConfig(CurriculumConfig):
    """Curriculum options for :class:`GainRLGRPOTrainer`.

    Every field of :class:`anglerank.curriculum.CurriculumConfig` (same
    defaults and help as ``anglerank train``), plus where the trainer finds
    the ranking, the angle term and the reward that decides "correct".
    ``seed`` and ``shuffle`` default to TRL's ``args.seed`` and
    ``shuffle_dataset``.
    """

    seed: int | None = field(default=None, metadata={"help": "Seed of the sampler's private generator; None uses "
                                                             "TRL's args.seed."})
    shuffle: bool | None = field(default=None, metadata={"help": "Train an epoch's prompts in random order; None "
                                                                 "uses TRL's args.shuffle_dataset."})
    rank_column: str = field(default="angle_rank", metadata={"help": "Column with the angle rank (0 = first)."})
    angle: str | float | None = field(
        default="angle_score",
        metadata={"help": "Column whose mean over the epoch's prompts is the angle term, or a constant (None = 0)."},
    )
    reward_func: str | int | None = field(
        default=None,
        metadata={"help": "Reward function (name or index) whose reward decides correctness; None = TRL's "
                          "weighted sum of all reward functions."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.rank_column, str) or not self.rank_column:
            raise UserError(f"rank_column must be a column name, got {self.rank_column!r}")
        if self.reward_func is not None and (isinstance(self.reward_func, bool)
                                             or not isinstance(self.reward_func, (str, int))):
            raise UserError(f"reward_func must be a reward function's name or index, got {self.reward_func!r}")

    @classmethod
    def from_dict(cls, options: dict) -> "GainRLConfig":
        """Build from a dict of fields; removed or unknown options are a :class:`UserError`."""
        known = {f.name for f in fields(cls)}
        for key in options:
            if key in _REMOVED:
                raise UserError(f"GainRLConfig option {key!r} was removed: {_REMOVED[key]}")
            if key not in known:
                raise UserError(f"unknown GainRLConfig option {key!r}; known: {', '.join(sorted(known))}")
        return cls(**options)

    def curriculum_config(self, seed: int, shuffle: bool) -> CurriculumConfig:
        """The shared curriculum settings, with ``seed`` / ``shuffle`` used where this config leaves them None."""
        values = {f.name: getattr(self, f.name) for f in fields(CurriculumConfig)}
        values["seed"] = int(seed if self.seed is None else self.seed)
        values["shuffle"] = bool(shuffle if self.shuffle is None else self.shuffle)
        return CurriculumConfig(**values)


class GainRLRepeatSampler:
    """TRL ``RepeatSampler`` layout over each epoch's GAIN-RL subset.

    ``batch_size`` distinct prompts per chunk (``generation_batch_size //
    num_generations``), each chunk repeated ``repeat_count`` times, each prompt
    ``mini_repeat_count`` (= ``num_generations``) times in a row. The draw
    happens when the first index of an epoch is requested, i.e. after the
    previous epoch's ``mu`` update.
    """

    def __init__(self, curriculum: Curriculum, mini_repeat_count: int, batch_size: int, repeat_count: int = 1):
        if curriculum.subset_size % batch_size:
            raise ValueError(
                f"subset_size {curriculum.subset_size} is not a multiple of the prompt chunk {batch_size}"
            )
        self.curriculum = curriculum
        self.mini_repeat_count = int(mini_repeat_count)
        self.batch_size = int(batch_size)
        self.repeat_count = int(repeat_count)
        self.replay_pending = False  # set on resume: replay the open epoch instead of drawing

    def __len__(self) -> int:
        return self.curriculum.subset_size * self.mini_repeat_count * self.repeat_count

    def _epoch_rows(self) -> np.ndarray:
        cur = self.curriculum
        if self.replay_pending and cur.open and cur.rows is not None:
            self.replay_pending = False
            return cur.rows.copy()
        self.replay_pending = False
        return cur.begin_epoch()

    def __iter__(self) -> Iterator[int]:
        rows = [int(r) for r in self._epoch_rows()]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index


def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class GainRLCallback(_transformers_callback_base()):
    """Closes each GAIN-RL epoch and writes the curriculum into checkpoints."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._gainrl_end_epoch()
        return control

    def on_save(self, args, state, control, **kwargs):
        # Saves run after the epoch's last step but before on_epoch_end; the epoch's
        # statistics are complete then, so close it now and a resume draws the next one.
        if state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-6 and state.epoch > 0:
            self.trainer._gainrl_end_epoch()
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                self.trainer.save_gainrl_state(folder)
            else:
                logger.warning("GAIN-RL: checkpoint folder %s not found; curriculum state not saved", folder)
        return control


class GainRLMixin:
    """Adds the curriculum to a ``GRPOTrainer`` (subclass); see the module doc.

    Extra constructor argument: ``gainrl`` (a :class:`GainRLConfig` or a dict
    of its fields). The curriculum is ``trainer.gainrl`` (an
    :class:`anglerank.curriculum.Curriculum`).
    """

    def __init__(self, *args: Any, gainrl: GainRLConfig | dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if gainrl is None:
            gainrl = GainRLConfig()
        elif isinstance(gainrl, dict):
            gainrl = GainRLConfig.from_dict(gainrl)
        self.gainrl_config: GainRLConfig = gainrl
        if not hasattr(self, "_calculate_rewards") or not hasattr(self, "num_generations"):
            raise TypeError("GainRLMixin needs a TRL GRPOTrainer (with _calculate_rewards and num_generations)")
        self.gainrl = self._build_gainrl_curriculum(self.train_dataset)
        self._gainrl_replay = False  # set by a resume into an open epoch: replay its subset
        self._gainrl_reward_col = self._resolve_reward_func(gainrl.reward_func)
        self.add_callback(GainRLCallback(self))

    # -- construction
    def _gainrl_chunk(self) -> int:
        return self.args.generation_batch_size // self.num_generations

    def _build_gainrl_curriculum(self, dataset: Any) -> Curriculum:
        cfg = self.gainrl_config
        if dataset is None:
            raise UserError("GAIN-RL needs a train_dataset (the ranked Parquet)")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise UserError("GAIN-RL needs a map-style train_dataset (random access by rank), not a streaming one")
        config = cfg.curriculum_config(seed=self.args.seed, shuffle=getattr(self, "shuffle_dataset", True))
        return curriculum_for(dataset, config, rank_column=cfg.rank_column, angle=cfg.angle,
                              chunk=self._gainrl_chunk())

    def _resolve_reward_func(self, which: str | int | None) -> int | None:
        if which is None:
            return None
        names = list(getattr(self, "reward_func_names", []))
        if isinstance(which, int):
            if not 0 <= which < len(names):
                raise UserError(f"reward_func index {which} out of range for {len(names)} reward functions")
            return which
        if which not in names:
            raise UserError(f"reward_func {which!r} is not one of the trainer's reward functions {names}")
        return names.index(which)

    # -- TRL hooks
    def _get_train_sampler(self, dataset: Any = None) -> GainRLRepeatSampler:
        if dataset is not None and len(dataset) != self.gainrl.n_items:
            raise UserError(
                f"the train dataset has {len(dataset)} rows but the GAIN-RL curriculum was built on "
                f"{self.gainrl.n_items}; build the trainer on the data it trains on"
            )
        sampler = GainRLRepeatSampler(
            self.gainrl,
            mini_repeat_count=self.num_generations,
            batch_size=self._gainrl_chunk(),
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )
        sampler.replay_pending, self._gainrl_replay = self._gainrl_replay, False
        return sampler

    def _calculate_rewards(self, *args: Any, **kwargs: Any):
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        if self.model.training:  # training generation batch, gathered: the same on every process
            self._gainrl_observe(rewards_per_func)
        return rewards_per_func

    def _gainrl_observe(self, rewards_per_func: Any) -> None:
        """Per-completion rewards of the chosen function (or TRL's weighted sum) to the curriculum.

        The curriculum applies the one correctness rule (reward >= correct_threshold);
        a completion no reward function could score (all NaN) is left out, as TRL does.
        """
        import torch

        r = rewards_per_func.detach().float().cpu()
        if self._gainrl_reward_col is not None:
            rewards = r[:, self._gainrl_reward_col]
        else:
            weights = self.reward_weights.detach().float().cpu().unsqueeze(0)
            rewards = (r * weights).nansum(dim=1)
            rewards[torch.isnan(r).all(dim=1)] = torch.nan
        self.gainrl.observe(rewards.numpy())

    def _gainrl_end_epoch(self) -> dict | None:
        record = self.gainrl.end_epoch()
        metrics = getattr(self, "_metrics", None)
        if record is not None and isinstance(metrics, dict) and "train" in metrics:
            # gainrl/mu is the centre the next epoch draws around (after this epoch's move)
            logged = {"gainrl/mu": record["mu_next"], "gainrl/delta": record["delta"],
                      "gainrl/angle": record["angle"], "gainrl/accuracy": record["accuracy"]}
            for key, value in logged.items():
                if value is not None:
                    metrics["train"][key].append(value)
        return record

    # -- checkpoints
    def save_gainrl_state(self, folder: str) -> str:
        """Write the curriculum state to ``folder/gainrl_state.json`` (atomic)."""
        path = os.path.join(folder, STATE_FILE)
        payload = {"config": asdict(self.gainrl_config), "curriculum": self.gainrl.state_dict()}
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
        return path

    def load_gainrl_state(self, folder: str) -> bool:
        """Restore the curriculum from a checkpoint folder; False if it has none."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.exists(path):
            logger.warning("GAIN-RL: %s has no %s; the curriculum starts fresh", folder, STATE_FILE)
            return False
        with open(path) as fh:
            payload = json.load(fh)
        self.gainrl.load_state_dict(payload["curriculum"])
        self._gainrl_replay = self.gainrl.open
        return True

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if isinstance(folder, bool):
                from transformers.trainer_utils import get_last_checkpoint

                folder = get_last_checkpoint(self.args.output_dir)
            if folder is not None:
                self.load_gainrl_state(str(folder))
        return super().train(resume_from_checkpoint, *args, **kwargs)


_LAZY: dict[str, type] = {}


def _build_trainer_class() -> type:
    try:
        from trl import GRPOTrainer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtra("anglerank.integrations.trl needs the `trl` package: pip install trl") from exc

    cls = type(
        "GainRLGRPOTrainer",
        (GainRLMixin, GRPOTrainer),
        {
            "__module__": __name__,
            "__qualname__": "GainRLGRPOTrainer",
            "__doc__": "TRL ``GRPOTrainer`` with GAIN-RL sampling; extra argument ``gainrl=GainRLConfig(...)``.",
        },
    )
    return cls


def __getattr__(name: str) -> Any:
    if name == "GainRLGRPOTrainer":
        if name not in _LAZY:
            _LAZY[name] = _build_trainer_class()
            globals()[name] = _LAZY[name]
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
