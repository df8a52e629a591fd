"""GAIN-RL sampling for TRL's ``GRPOTrainer`` (METHOD.md section 3).

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
  (``_calculate_rewards``, identical on all processes) are mapped to
  per-completion correctness (``accuracy="threshold"``: reward >
  ``reward_threshold``; ``"mean"``: reward mapped linearly from
  ``reward_range`` to 0..1) and averaged over the epoch;
- at the end of the epoch (``on_epoch_end``), before the next draw, ``mu``
  moves by ``clamp(step tanh(alpha (acc - beta_acc)) + step tanh(alpha ang),
  adj_min, adj_max)`` with ``ang`` the mean of the ``angle`` column
  (``angle_score`` by default) over the epoch's prompts. ``gainrl/mu``,
  ``gainrl/accuracy``, ``gainrl/angle`` and ``gainrl/delta`` go to the logs;
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
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anglerank.integrations import (
    DEFAULTS,
    GainRLCurriculum,
    completion_scores,
    read_ranks,
    resolve_angle,
)

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


@dataclass
class GainRLConfig:
    """GAIN-RL options for :class:`GainRLGRPOTrainer`.

    Rank-unit fields (``mu0``, ``sigma``, ``step``, ``adj_min``, ``adj_max``)
    take absolute ranks (an int, or a float > 1) or fractions of the number of
    rows N (a float in (0, 1]); the defaults are the authors' values expressed
    as fractions (exactly theirs at N = 7,500).
    """

    subset_size: int = field(
        default=DEFAULTS["subset_size"],
        metadata={"help": "Prompts per epoch (K), rounded down to whole generation batches, capped by N."},
    )
    mu0: float = field(default=DEFAULTS["mu0"], metadata={"help": "Initial centre (rank units or fraction of N)."})
    sigma: float = field(default=DEFAULTS["sigma"], metadata={"help": "Gaussian width (rank units or fraction)."})
    step: float = field(default=DEFAULTS["step"], metadata={"help": "n in the mu update (rank units or fraction)."})
    alpha: float = field(default=DEFAULTS["alpha"], metadata={"help": "tanh slope of the mu update."})
    beta_acc: float = field(default=DEFAULTS["beta_acc"], metadata={"help": "Accuracy at which the accuracy term is 0."})
    adj_min: float = field(default=DEFAULTS["adj_min"], metadata={"help": "Lower clamp of the update; < 0 lets mu move back."})
    adj_max: float = field(default=DEFAULTS["adj_max"], metadata={"help": "Upper clamp of the update."})
    seed: int | None = field(default=None, metadata={"help": "Sampler seed; None uses args.seed."})
    shuffle: bool | None = field(
        default=None, metadata={"help": "Shuffle the subset within the epoch; None uses args.shuffle_dataset."}
    )
    rank_column: str = field(default="angle_rank", metadata={"help": "Column with the angle rank (0 = highest)."})
    angle: str | float | None = field(
        default="angle_score",
        metadata={"help": "Column whose mean over the epoch's prompts is the angle term, or a constant (None = 0)."},
    )
    accuracy: str = field(
        default="threshold",
        metadata={"help": "'threshold': share of completions with reward > reward_threshold; "
                          "'mean': mean reward mapped from reward_range to 0..1."},
    )
    reward_threshold: float = field(default=0.0, metadata={"help": "A completion is correct if reward > this."})
    reward_range: tuple[float, float] = field(
        default=(0.0, 1.0), metadata={"help": "(lo, hi) rewards mapped to accuracy 0 and 1 in 'mean' mode."}
    )
    reward_func: str | int | None = field(
        default=None,
        metadata={"help": "Reward function (name or index) that defines correctness; None = TRL's weighted sum."},
    )

    def __post_init__(self) -> None:
        if self.accuracy not in ("threshold", "mean"):
            raise ValueError(f"accuracy must be 'threshold' or 'mean', got {self.accuracy!r}")
        if int(self.subset_size) < 1:
            raise ValueError(f"subset_size must be >= 1, got {self.subset_size}")
        lo, hi = self.reward_range
        if not float(hi) > float(lo):
            raise ValueError(f"reward_range must be (lo, hi) with hi > lo, got {self.reward_range!r}")


class GainRLRepeatSampler:
    """TRL ``RepeatSampler`` layout over each epoch's GAIN-RL subset.

    ``batch_size`` distinct prompts per chunk (``generation_batch_size //
    num_generations``), each chunk repeated ``repeat_count`` times, each prompt
    ``mini_repeat_count`` (= ``num_generations``) times in a row. The draw
    happens when the first index of an epoch is requested, i.e. after the
    previous epoch's ``mu`` update.
    """

    def __init__(self, curriculum: GainRLCurriculum, mini_repeat_count: int, batch_size: int, repeat_count: int = 1):
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
    """Adds GAIN-RL sampling to a ``GRPOTrainer`` (subclass); see the module doc.

    Extra constructor argument: ``gainrl`` (a :class:`GainRLConfig` or a dict
    of its fields). The curriculum is ``trainer.gainrl`` (a
    :class:`anglerank.integrations.GainRLCurriculum`).
    """

    def __init__(self, *args: Any, gainrl: GainRLConfig | dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if gainrl is None:
            gainrl = GainRLConfig()
        elif isinstance(gainrl, dict):
            gainrl = GainRLConfig(**gainrl)
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

    def _build_gainrl_curriculum(self, dataset: Any) -> GainRLCurriculum:
        cfg = self.gainrl_config
        if dataset is None:
            raise ValueError("GAIN-RL needs a train_dataset (the ranked Parquet)")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError("GAIN-RL needs a map-style train_dataset (random access by rank), not a streaming one")
        ranks = read_ranks(dataset, cfg.rank_column)
        angles, angle_default = resolve_angle(dataset, cfg.angle)
        seed = self.args.seed if cfg.seed is None else cfg.seed
        shuffle = getattr(self, "shuffle_dataset", True) if cfg.shuffle is None else cfg.shuffle
        return GainRLCurriculum(
            ranks, cfg.subset_size, angles=angles, angle_default=angle_default, chunk=self._gainrl_chunk(),
            mu0=cfg.mu0, sigma=cfg.sigma, step=cfg.step, alpha=cfg.alpha, beta_acc=cfg.beta_acc,
            adj_min=cfg.adj_min, adj_max=cfg.adj_max, seed=int(seed), shuffle=bool(shuffle),
        )

    def _resolve_reward_func(self, which: str | int | None) -> int | None:
        if which is None:
            return None
        names = list(getattr(self, "reward_func_names", []))
        if isinstance(which, int):
            if not 0 <= which < len(names):
                raise ValueError(f"reward_func index {which} out of range for {len(names)} reward functions")
            return which
        if which not in names:
            raise ValueError(f"reward_func {which!r} is not one of the trainer's reward functions {names}")
        return names.index(which)

    # -- TRL hooks
    def _get_train_sampler(self, dataset: Any = None) -> GainRLRepeatSampler:
        if dataset is not None and len(dataset) != self.gainrl.n_items:
            raise ValueError(
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
        import torch

        r = rewards_per_func.detach().float().cpu()
        if self._gainrl_reward_col is not None:
            rewards = r[:, self._gainrl_reward_col]
        else:
            weights = self.reward_weights.detach().float().cpu().unsqueeze(0)
            rewards = (r * weights).nansum(dim=1)
            rewards[torch.isnan(r).all(dim=1)] = torch.nan  # unscorable completions, as TRL does
        cfg = self.gainrl_config
        scores = completion_scores(
            rewards.numpy(), mode=cfg.accuracy, threshold=cfg.reward_threshold, reward_range=cfg.reward_range
        )
        self.gainrl.observe(scores)

    def _gainrl_end_epoch(self) -> dict | None:
        record = self.gainrl.end_epoch()
        if record is not None:
            metrics = getattr(self, "_metrics", None)
            if isinstance(metrics, dict) and "train" in metrics:
                metrics["train"]["gainrl/mu"].append(record["mu"])
                metrics["train"]["gainrl/delta"].append(record["delta"])
                metrics["train"]["gainrl/angle"].append(record["angle"])
                if record["accuracy"] is not None:
                    metrics["train"]["gainrl/accuracy"].append(record["accuracy"])
        return record

    # -- checkpoints
    def save_gainrl_state(self, folder: str) -> str:
        """Write the curriculum state to ``folder/gainrl_state.json`` (atomic)."""
        path = os.path.join(folder, STATE_FILE)
        payload = {"config": _jsonable(asdict(self.gainrl_config)), "curriculum": self.gainrl.state_dict()}
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


_LAZY: dict[str, type] = {}


def _build_trainer_class() -> type:
    try:
        from trl import GRPOTrainer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "anglerank.integrations.trl needs the `trl` package: pip install trl"
        ) from exc

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
