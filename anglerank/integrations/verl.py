"""GAIN-RL curriculum sampler for verl's PPO/GRPO trainer (docs/method.md, "The training loop").

This module exists so a verl user gets GAIN-RL sampling from command-line
flags alone::

    data.train_files=ranked.parquet \\
    data.sampler.class_path=pkg://anglerank.integrations.verl \\
    data.sampler.class_name=GainRLSampler \\
    data.dataloader_num_workers=0 \\
    +data.gainrl.subset_size=256 +data.gainrl.sigma=0.1

verl's curriculum interface (``verl.experimental.dataset.sampler``, verl 0.5 to
0.7; verl 0.8 removed it from the PPO trainer): ``create_rl_sampler`` builds
``class_name`` from ``class_path`` as ``cls(data_source=dataset,
data_config=config.data)``, the dataloader iterates it (``num_workers`` must be
0), and after every training step the trainer calls ``sampler.update(batch)``
with the step's ``DataProto``. The dataloader's checkpoint (``data.pt``)
includes the sampler's ``state_dict()`` because the sampler is ``Stateful``.

How GAIN-RL maps onto that:

- one pass of the dataloader is one GAIN-RL epoch: ``__iter__`` yields the
  row indices of ``subset_size`` prompts drawn from the Gaussian over their
  ``angle_rank`` positions (the draw happens on the first index requested, i.e.
  after the previous epoch's update), and ``len(sampler)`` is that size, so
  ``trainer.total_epochs`` counts GAIN-RL epochs. ``subset_size`` is rounded
  down to a multiple of the loader's batch size (``data.gen_batch_size`` or
  else ``data.train_batch_size``) because verl drops the last partial batch;
- ``update(batch)`` sums each response's ``token_level_scores`` (else
  ``token_level_rewards``) over tokens and hands these rewards to the
  :class:`anglerank.curriculum.Curriculum`, which counts a response correct
  when its reward is ``>= correct_threshold`` (the curriculum's one rule) and
  accumulates the epoch's accuracy over all ``n`` responses of every prompt.
  When the update for the epoch's last batch arrives, the window moves by the
  rule (no lag) with the angle term the mean ``angle_score`` of the epoch's
  prompts, and stays on the data (clamped to the last rank, or with ``wrap``
  a new pass on a circular window that covers both ends equally);
- ``state_dict()`` / ``load_state_dict()`` carry ``mu``, the generator, the
  epoch's subset, the position in it and the accuracy so far, so a resumed run
  continues the epoch where the checkpoint left it. verl saves the checkpoint
  before it calls ``update`` for that step, so the statistics of the
  checkpointed step itself are missing from a resumed epoch's accuracy.

Configuration: keys of ``data.gainrl`` (and, with lower precedence, extra keys
of ``data.sampler``), all optional: every field of
:class:`anglerank.curriculum.CurriculumConfig` with its defaults (the same as
``anglerank train``: ``sampler``, ``ranking`` (``angle`` reads ``rank_column``;
``random``, ``length`` counting the characters of ``data.prompt_key``,
``column:NAME[:desc]``), ``subset_size``, ``mu0``, ``sigma``,
``step``, ``alpha``, ``beta_acc``, ``adj_min``, ``adj_max``, ``wrap``,
``shuffle``, ``seed``, ``correct_threshold``; rank-unit values are ranks, an
int, or fractions of the data set size, a float in (0, 1]), plus::

    seed               data.seed, else 0
    rank_column        angle_rank
    angle              angle_score    column averaged over the epoch, or a number
    reward_key         token_level_scores   a batch tensor (summed over the last dim) or a
                                      non_tensor_batch key (one value per response, e.g. acc)
    batch_size         data.gen_batch_size, else data.train_batch_size

The earlier ``accuracy`` and ``reward_range`` keys are gone, and
``correct_threshold`` now means ``reward >= correct_threshold`` with default
1.0 (it was ``reward > 0.0``).

``GainRLSampler`` inherits verl's ``AbstractCurriculumSampler`` when verl is
importable (verl checks ``isinstance`` before calling ``update``); otherwise it
is a plain ``torch.utils.data.Sampler`` with the same interface. The class is
built on first access, so importing this module does not import verl.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from anglerank.curriculum import CurriculumConfig
from anglerank.errors import UserError
from anglerank.integrations.columns import curriculum_for

__all__ = ["CONFIG_KEYS", "GainRLSampler", "read_options", "response_rewards"]

_CURRICULUM_KEYS = tuple(f.name for f in fields(CurriculumConfig))
CONFIG_KEYS = (*_CURRICULUM_KEYS, "rank_column", "angle", "reward_key", "batch_size")
# Options of earlier releases, replaced by the curriculum's one correctness rule.
_REMOVED = ("accuracy", "reward_range")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for dicts / OmegaConf configs / attribute objects, else ``default``."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
        try:
            value = cfg.get(key, default)
        except Exception:  # noqa: BLE001 - omegaconf raises its own errors on odd keys
            return default
        return default if value is None else value
    value = getattr(cfg, key, default)
    return default if value is None else value


def _plain(value: Any) -> Any:
    """OmegaConf containers to python lists/dicts (no omegaconf import needed)."""
    if hasattr(value, "keys") and not isinstance(value, dict):
        return {k: _plain(value[k]) for k in value.keys()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def _keys(section: Any) -> list:
    return list(section.keys() if hasattr(section, "keys") else vars(section))


def read_options(data_config: Any) -> dict:
    """GAIN-RL options from ``data_config.sampler`` extras then ``data_config.gainrl``."""
    opts: dict[str, Any] = {}
    for name in ("sampler", "gainrl"):
        section = _get(data_config, name)
        if section is None:
            continue
        for key in _keys(section):
            if key in _REMOVED:
                raise UserError(f"data.{name}.{key} was removed: a response is correct when its reward >= "
                                "correct_threshold (default 1.0)")
            if key not in CONFIG_KEYS and name == "gainrl":  # our own section: a typo is an error
                raise UserError(f"unknown GAIN-RL option data.gainrl.{key}; known: {', '.join(CONFIG_KEYS)}")
        for key in CONFIG_KEYS:  # data.sampler may hold verl's own keys too: take only ours
            value = _get(section, key)
            if value is not None:
                opts[key] = _plain(value)
    return opts


def curriculum_config(opts: dict, data_config: Any) -> CurriculumConfig:
    """The curriculum settings of :func:`read_options`' result; the seed defaults to ``data.seed``."""
    values = {k: v for k, v in opts.items() if k in _CURRICULUM_KEYS}
    values["seed"] = int(opts.get("seed", _get(data_config, "seed", 0)))
    if "shuffle" in values:
        values["shuffle"] = bool(values["shuffle"])
    return CurriculumConfig(**values)


def response_rewards(batch: Any, reward_key: str | None = None) -> np.ndarray:
    """One reward per response of a verl ``DataProto`` (float64, NaN kept).

    ``reward_key`` names a tensor of ``batch.batch`` (summed over its last
    dimension, e.g. the token-level scores whose only non-zero is the last
    response token) or an array of ``batch.non_tensor_batch``. Default: the
    first present of ``token_level_scores`` and ``token_level_rewards``.
    """
    tensors = getattr(batch, "batch", None)
    non_tensors = getattr(batch, "non_tensor_batch", None) or {}
    keys = [reward_key] if reward_key else ["token_level_scores", "token_level_rewards"]
    for key in keys:
        if tensors is not None and key in tensors.keys():
            t = tensors[key]
            t = t.detach().float().cpu() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
            values = t.sum(-1) if t.ndim > 1 else t
            return np.asarray(values.numpy() if hasattr(values, "numpy") else values, dtype=np.float64)
        if key in non_tensors:
            return np.asarray(
                [np.nan if v is None else float(v) for v in np.asarray(non_tensors[key]).reshape(-1)],
                dtype=np.float64,
            )
    raise UserError(
        f"the batch has no reward {keys} (tensor keys: {list(tensors.keys()) if tensors is not None else []}, "
        f"non-tensor keys: {list(non_tensors)})"
    )


class _GainRLSamplerImpl:
    """The sampler's behaviour; ``GainRLSampler`` adds verl's base class."""

    def __init__(self, data_source: Any, data_config: Any = None):
        opts = read_options(data_config)
        self.options = opts
        batch_size = opts.get("batch_size") or _get(data_config, "gen_batch_size") or _get(
            data_config, "train_batch_size", 1
        )
        self.reward_key = opts.get("reward_key")
        self.curriculum = curriculum_for(
            data_source, curriculum_config(opts, data_config), rank_column=opts.get("rank_column", "angle_rank"),
            angle=opts.get("angle", "angle_score"), chunk=int(batch_size),
            prompt_column=_get(data_config, "prompt_key", "prompt"),
        )
        self.position = 0  # indices of the current epoch already yielded
        self._resume = False  # set by load_state_dict: continue the restored epoch

    # -- iteration
    def __len__(self) -> int:
        return self.curriculum.subset_size

    def _start(self) -> np.ndarray:
        cur = self.curriculum
        if self._resume:
            self._resume = False
            if cur.open and cur.rows is not None and self.position < len(cur.rows):
                return cur.rows
        # A fresh epoch: closes an epoch still open (its last update never came,
        # e.g. a partial last batch or a checkpoint taken on the epoch's last step).
        rows = cur.begin_epoch()
        self.position = 0
        return rows

    def __iter__(self) -> Iterator[int]:
        rows = self._start()
        while self.position < len(rows):
            index = int(rows[self.position])
            self.position += 1
            yield index

    # -- curriculum feedback
    def update(self, batch: Any) -> None:
        """Record the step's response rewards (a ``DataProto``); close the epoch after its last batch."""
        self.observe(response_rewards(batch, self.reward_key))

    def observe(self, rewards: np.ndarray) -> None:
        """Record one reward per response of a step; close the epoch after its last batch."""
        cur = self.curriculum
        cur.observe(rewards)
        if cur.open and cur.rows is not None and self.position >= len(cur.rows):
            cur.end_epoch()

    @property
    def mu(self) -> float | None:
        return self.curriculum.mu

    # -- checkpointing (torchdata's StatefulDataLoader calls these)
    def state_dict(self) -> dict:
        return {"curriculum": self.curriculum.state_dict(), "position": int(self.position)}

    def load_state_dict(self, state: dict) -> None:
        self.curriculum.load_state_dict(state["curriculum"])
        self.position = int(state["position"])
        self._resume = True


def _verl_base() -> tuple[type, bool]:
    try:
        from verl.experimental.dataset.sampler import AbstractCurriculumSampler
    except Exception:  # noqa: BLE001 - verl absent, or a version without the interface
        from torch.utils.data import Sampler

        return Sampler, False
    return AbstractCurriculumSampler, True


_LAZY: dict[str, type] = {}


def _build_sampler_class() -> type:
    base, is_verl = _verl_base()
    cls = type(
        "GainRLSampler",
        (_GainRLSamplerImpl, base),
        {
            "__module__": __name__,
            "__qualname__": "GainRLSampler",
            "__doc__": (
                "GAIN-RL curriculum sampler for verl (``data.sampler.class_name=GainRLSampler``); "
                "constructed as ``GainRLSampler(data_source, data_config)``. See the module doc."
            ),
            "__init__": _GainRLSamplerImpl.__init__,
            "VERL_BASE": is_verl,
        },
    )
    return cls


def __getattr__(name: str) -> Any:
    if name == "GainRLSampler":
        if name not in _LAZY:
            _LAZY[name] = _build_sampler_class()
            globals()[name] = _LAZY[name]
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
