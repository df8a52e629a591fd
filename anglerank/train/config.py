"""Configuration of `anglerank train`: one dataclass, TOML in, TOML out.

Every setting of a run is a field declared once (:mod:`anglerank.settings`): the
ones `train` shares are inherited from where they belong (the curriculum's from
:class:`anglerank.curriculum.CurriculumSettings`, the model, prompt and angle ones
from :mod:`anglerank.scoring.options`, the sampling and answer ones from
:mod:`anglerank.rollouts`), the rest are declared here. Each field's help,
panel, valid range and choices drive ``anglerank train --help``, the checks
(before any work starts) and the TOML file; ``__post_init__`` holds the cross-field
checks (TRL's ``GRPOConfig`` pattern). A run is configured from defaults, then a
TOML file (``--config run.toml``), then command-line flags, and the resolved result
is written to ``RUN_DIR/config.toml`` so ``--config RUN_DIR/config.toml`` reproduces
it. Rank-unit fields follow :mod:`anglerank.curriculum.units`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Optional
from pathlib import Path

from anglerank import settings
from anglerank.curriculum import DEFAULTS, CurriculumConfig, CurriculumSettings, parse_rank_value
from anglerank.errors import UserError
from anglerank.rollouts import AnswerSettings, SamplingSettings
from anglerank.scoring.options import AngleSettings, InputColumns, ModelSettings, PromptFormat, ScoreOptions
from anglerank.settings import base_type, setting
from anglerank.train.tracking import REPORT_TO

__all__ = ["TrainConfig", "build_config", "coerce", "load_toml", "dump_toml", "UNIT_FIELDS", "ALIASES", "SMOKE",
           "RESUME_OVERRIDABLE"]

# Earlier names of settings, still read from TOML files (a run saved before the rename resumes) and flags.
ALIASES = {"keep_checkpoints": "save_total_limit"}
# `anglerank train --smoke`: a run that checks a set-up end to end in a minute or two on a laptop CPU (a 135M
# model) and keeps one small checkpoint; flags given on the command line override these.
SMOKE = {"limit": 32, "subset_size": 8, "epochs": 2, "prompts_per_step": 4, "num_generations": 2,
         "max_new_tokens": 32, "eval_limit": 8, "eval_max_new_tokens": 32, "rescore_every": 0,
         "save_total_limit": 1}


def _f(default, help: str, panel: str, **meta):
    """A setting of `anglerank train` alone (see :func:`anglerank.settings.setting`)."""
    return setting(default, help, panel=panel, **meta)


def _loss_types() -> tuple:
    from anglerank.train.grpo import LOSS_TYPES  # the loss module imports torch: only when checked

    return LOSS_TYPES


D, M, R, W, L, G, O = "Data", "Model", "Rollouts", "Rewards", "Loss and optimiser", "GAIN-RL", "Run"


@dataclass
class TrainConfig(CurriculumSettings, AngleSettings, PromptFormat, InputColumns, ModelSettings, AnswerSettings,
                  SamplingSettings):
    """Everything that defines a `anglerank train` run: the settings it shares with `score`, `passrate` and
    `sample` by inheritance (each declared once, where it belongs), then its own."""

    # --- data -----------------------------------------------------------------------
    train_data: list = _f(None, "Training Parquet files, directories or globs (verl layout or plain columns).", D,
                          factory=list, cli=False)
    output_dir: str | None = _f(None, "Run directory: config.toml, metrics.jsonl, subsets.jsonl, checkpoints/.", D,
                                flags=("--output", "-o"))
    eval_data: list | None = _f(None, "Held-out Parquet for greedy-accuracy evaluation (repeat for several files).", D)
    max_prompt_length: int = _f(512, "Prompts longer than this many tokens are left out of the pool (counted in "
                                "the log).", D,
                                valid=">= 2")
    limit: int | None = _f(None, "Use only the first N training rows.", D, valid=">= 1")
    eval_limit: int | None = _f(None, "Evaluate on a seeded random subset of N eval rows (the same subset every "
                                "time).", D,
                                valid=">= 1")

    # --- model ----------------------------------------------------------------------
    threads: int | None = _f(None, "CPU threads for torch (default: the cores not busy with other work at "
                             "start-up, as the start-up line says; torch's own default takes every core, and on a "
                             "shared, busy CPU that is several times slower).", M, valid=">= 1", resume=True)
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory, ~30% "
                                      "slower).", M,
                                      resume=True)
    lora_r: int = _f(0, "LoRA rank (peft); 0 trains every weight. With LoRA the KL reference is the base model with "
                     "the adapter switched off, and checkpoints hold the adapter.", M, valid=">= 0")
    lora_alpha: float = _f(16.0, "LoRA scaling alpha (the update is scaled by alpha / r).", M, valid="> 0")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.", M, valid="[0, 1)")
    lora_target_modules: list | None = _f(None, "Modules that get adapters (repeat the flag); default: every linear "
                                          "layer but the output head, i.e. the attention and MLP projections.", M)

    # --- rollouts ---------------------------------------------------------------------
    num_generations: int = _f(8, "Completions per prompt (G, the group size).", R, valid=">= 2")
    top_k: int = _f(0, "Top-k sampling (0 = off).", R, valid=">= 0")
    generation_batch_size: int = _f(64, "Sequences per `generate` call.", R, valid=">= 1",
                                   resume=True)
    filter_groups: bool = _f(False, "Dynamic sampling (DAPO; verl's algorithm.filter_groups.enable): drop groups "
                             "whose G rewards are all equal (no advantage, no gradient) and roll out further "
                             "prompts of the epoch, then further draws of the sampler, until the step has "
                             "--prompts-per-step informative groups. The curriculum still sees every group.", R)
    max_num_gen_batches: int = _f(10, "With --filter-groups: at most this many rollout batches per step, the first "
                                  "included (verl's algorithm.filter_groups.max_num_gen_batches; 0 = no cap). When "
                                  "hit, the step trains on the informative groups it has and logs filter_cap_hit.", R,
                                  valid=">= 0")

    # --- rewards ----------------------------------------------------------------------
    reward: list = _f(None, "Reward function: 'math' (built-in checker), 'code' / 'code_all' (the last fenced Python "
                      "block run against the row's 'tests' in a sandbox: share passed / all or nothing) or "
                      "module:function / file.py:function with "
                      "TRL's signature (prompts, completions, **columns) -> list[float]. Repeat for several. "
                      "Default: math.", W,
                      factory=lambda: ["math"])
    reward_weight: list | None = _f(None, "Weight of each --reward, in the same order (default 1 each).", W,
                                    valid="any", cli_type=Optional[list[float]])

    # --- loss and optimiser ----------------------------------------------------------------
    prompts_per_step: int = _f(8, "Prompts per rollout batch (x G completions); one optimiser update per batch "
                               "and iteration.", L, valid=">= 1")
    micro_batch_size: int = _f(8, "Sequences per forward/backward; gradients accumulate over the batch.", L,
                               valid=">= 1")
    num_iterations: int = _f(1, "Optimiser updates per rollout batch (GRPO's mu; >1 uses the clipped ratio).", L,
                             valid=">= 1")
    loss_type: str = _f("grpo", "grpo (mean per sequence), dapo/bnpo (mean per token over the batch), dr_grpo "
                        "(sum / (B * max-new-tokens)).", L, choices=_loss_types)
    scale_rewards: str = _f("group", "group: advantage = (r - mean) / std within the group; none: r - mean "
                            "(Dr. GRPO).", L,
                              choices=("group", "none"))
    epsilon: float = _f(0.2, "Lower clip range of the ratio.", L, valid=">= 0")
    epsilon_high: float | None = _f(None, "Upper clip range (default: --epsilon; DAPO uses 0.28).", L, valid=">= 0")
    beta: float = _f(0.0, "KL penalty to the frozen initial policy (k3). 0 loads no reference model; the authors "
                     "used 0.005.", L, valid=">= 0")
    lr: float = _f(1e-6, "Peak learning rate (authors: 1e-6).", L, valid="> 0")
    lr_schedule: str = _f("constant", "constant or cosine (after warm-up).", L, choices=("constant", "cosine"))
    warmup_steps: int = _f(0, "Linear warm-up over this many optimiser updates.", L, valid=">= 0")
    min_lr_ratio: float = _f(0.0, "Cosine: final lr as a fraction of --lr.", L, valid="[0, 1]")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (not applied to norms and biases).", L, valid=">= 0")
    adam_beta1: float = _f(0.9, "AdamW beta1.", L, valid="[0, 1)")
    adam_beta2: float = _f(0.99, "AdamW beta2.", L, valid="[0, 1)")
    adam_eps: float = _f(1e-8, "AdamW epsilon.", L, valid="> 0")
    max_grad_norm: float = _f(0.1, "Clip the global gradient norm (0 = no clipping).", L, valid=">= 0")

    # --- GAIN-RL ------------------------------------------------------------------------
    epochs: int = _f(10, "Epochs; one epoch is one sampled subset of --subset-size prompts.", G, valid=">= 0",
                     resume=True)
    keep_order: bool = _f(False, "Train an epoch's prompts in rank order instead of shuffled.", G)
    rescore_every: float = _f(
        0.5, "Re-score prompts with the live policy after every this many prompts trained: an integer is prompts, "
        "a float in (0, 1] a fraction of the pool (0.5: twice per pass over the data; 0: only the initial "
        "scoring). Only the angle ranking follows the policy; the others are never re-scored.", G, valid=">= 0",
        parse=parse_rank_value, cli_type=str)
    rescore_scope: str = _f("reachable", "reachable: re-score only the ranks the window can reach before the next "
                            "re-scoring and re-order them among themselves; all: every prompt.", G,
                            choices=("reachable", "all"))
    staleness_every: int = _f(0, "Diagnostic: every N epochs score every prompt with the live policy without using "
                              "it and log how far the ranking in use has drifted (Spearman; its time is logged "
                              "apart, as staleness_s). 0 = never.", G, valid=">= 0",
                              resume=True)
    layer: int = _f(-1, "Decoder layer for scores and the angle term.", G, valid="any")
    score_batch_tokens: int | None = _f(None, "Token budget per scoring forward batch (default as in `score`: "
                                        "16384 on GPUs; on CPUs 4096 with AMX, else 1024).", G,
                                        valid=">= 1")

    # --- run ----------------------------------------------------------------------------
    eval_every: int = _f(1, "Evaluate every N epochs (and before the first and after the last; 0 = never).", O,
                         valid=">= 0", resume=True)
    eval_max_new_tokens: int | None = _f(None, "Eval completion limit (default: --max-new-tokens).", O, valid=">= 1")
    eval_batch_size: int = _f(32, "Prompts per greedy eval `generate` call.", O, valid=">= 1",
                              resume=True)
    eval_by: str | None = _f("data_source", "Also report eval accuracy per value of this column (verl's per "
                             "data_source validation metrics; skipped when the default column is absent).", O)
    save_every: int = _f(1, "Checkpoint every N epochs (and at the end, and on Ctrl-C).", O, valid=">= 1",
                            resume=True)
    save_total_limit: int = _f(2, "Checkpoints to keep, oldest deleted first (TRL's option; --keep-checkpoints "
                               "is the same). The start-up line gives a checkpoint's size; one more is on disk "
                               "while the next is written.", O, valid=">= 1",
                               flags=("--save-total-limit", "--keep-checkpoints"), resume=True)
    save_only_model: bool = _f(False, "Checkpoints without the optimiser state (weights, tokenizer, sampler and RNG "
                               "states): a third of the size; a resume then starts AdamW afresh.", O,
                               resume=True)
    seed: int = _f(0, "Seed for sampling, rollouts and the eval subset.", O, valid="[0, 2**63)")
    report_to: list = _f(None, "Experiment trackers, as TRL's option: none, tensorboard (RUN_DIR/tensorboard), wandb "
                         "(offline under RUN_DIR/wandb unless WANDB_MODE says otherwise) or trackio; repeat for "
                         "several. metrics.jsonl is always written.", O, factory=lambda: ["none"],
                         resume=True)
    keep_checkpoints: dataclasses.InitVar[int | None] = None  # the earlier name of save_total_limit

    def __post_init__(self, keep_checkpoints: int | None):
        def need(cond: bool, msg: str):
            if not cond:
                raise UserError(msg)

        if keep_checkpoints is not None:
            self.save_total_limit = keep_checkpoints

        if isinstance(self.train_data, (str, Path)):
            self.train_data = [str(self.train_data)]
        if isinstance(self.eval_data, (str, Path)):
            self.eval_data = [str(self.eval_data)]
        if isinstance(self.reward, str):
            self.reward = [self.reward]
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = [str(x).strip().lower() for x in self.report_to or ["none"]]
        for x in self.report_to:
            need(x in REPORT_TO, f"unknown --report-to {x!r}; choose from {', '.join(REPORT_TO)}")
        if self.reward_weight is not None and not isinstance(self.reward_weight, (list, tuple)):
            self.reward_weight = [self.reward_weight]
        self.train_data = [str(x) for x in self.train_data or []]
        self.eval_data = [str(x) for x in self.eval_data] if self.eval_data else None
        self.reward = [str(x) for x in self.reward or []]
        need(not isinstance(self.num_generations, int) or self.num_generations >= 2, "--num-generations must be "
             "at least 2: a group of one completion has no relative advantage, so GRPO would learn nothing")
        settings.check(self)
        need(self.adj_min <= self.adj_max or _mixed_units(self.adj_min, self.adj_max),
             f"--adj-min ({self.adj_min}) > --adj-max ({self.adj_max})")
        if self.reward_weight is not None:
            self.reward_weight = [float(w) for w in self.reward_weight]
            need(len(self.reward_weight) == len(self.reward),
                 f"{len(self.reward_weight)} --reward-weight values for {len(self.reward)} --reward functions")
        need(bool(self.reward), "at least one --reward is needed")
        self.curriculum()  # the curriculum checks its own fields

    @property
    def reward_specs(self) -> list:
        """The built-in rewards among --reward, each saying what it needs and whether it decides "correct"."""
        from anglerank.rewards import registered

        return registered(self.reward)

    def curriculum(self) -> CurriculumConfig:
        """The curriculum settings of this run (its seed is the run's seed)."""
        return CurriculumConfig(**{k: getattr(self, k) for k in DEFAULTS if k not in ("shuffle", "seed")},
                                shuffle=not self.keep_order, seed=self.seed)

    def score_options(self, **resolved) -> ScoreOptions:
        """How this run scores its prompts: the settings it shares with `score` as they are, its one layer and
        its own budget, and (``resolved``) the device and dtype in use."""
        shared = {f.name: getattr(self, f.name) for f in fields(ScoreOptions) if hasattr(self, f.name)}
        return ScoreOptions(**{**shared, "layers": [self.layer], "max_length": self.max_prompt_length,
                               "batch_tokens": self.score_batch_tokens, **resolved})

    def with_absolute_paths(self) -> "TrainConfig":
        """The same config with local paths made absolute, so a saved run resumes from any directory."""
        def local(spec: str) -> str:
            return str(Path(spec).expanduser().absolute())

        def reward(spec: str) -> str:
            file, sep, func = spec.rpartition(":")
            return local(file) + sep + func if file.endswith(".py") and Path(file).exists() else spec

        return dataclasses.replace(
            self, train_data=[local(x) for x in self.train_data],
            eval_data=[local(x) for x in self.eval_data] if self.eval_data else None,
            model=local(self.model) if self.model and Path(self.model).expanduser().exists() else self.model,
            output_dir=local(self.output_dir) if self.output_dir else None, reward=[reward(x) for x in self.reward])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings in rank units (an int is ranks / prompts, a float in (0, 1] a fraction of N): see curriculum.units.
UNIT_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("parse") is parse_rank_value)
# Settings a resumed run may change (they do not affect what was trained so far).
RESUME_OVERRIDABLE = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("resume"))
# The help panels in the order `--help` and config.toml show them.
PANELS = (D, M, R, W, L, G, O)


def in_panel_order() -> list:
    """The fields of TrainConfig grouped by panel (inherited ones join their panel)."""
    return sorted(fields(TrainConfig), key=lambda f: PANELS.index(f.metadata["panel"]))


def _mixed_units(a, b) -> bool:
    """adj_min/adj_max in different units (fraction vs ranks) are checked after resolution."""
    return (isinstance(a, float) and 0 < abs(a) <= 1) != (isinstance(b, float) and 0 < abs(b) <= 1)


# --- TOML ------------------------------------------------------------------------------

def coerce(name: str, value):
    """Check and convert one TOML/CLI value for field ``name``; raise ValueError."""
    f = next((f for f in fields(TrainConfig) if f.name == name), None)
    if f is None:
        raise UserError(f"unknown setting {name!r}")
    if value is None:
        return None
    base = base_type(f.type)
    if name in UNIT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number (ranks, or a fraction of N), got {value!r}")
        return value  # int vs float matters: keep it
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
        return value
    if base is list:
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return value


def load_toml(path: str | Path) -> dict:
    """Settings from a TOML file: top-level keys or a ``[train]`` table; dashes or underscores."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError("reading TOML needs Python 3.11+ or `pip install tomli`") from None
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text())
    except UnicodeDecodeError as exc:
        raise UserError(f"{p} is not UTF-8 text (TOML must be): byte {exc.start} "
                        f"is {exc.object[exc.start]:#04x}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p} is not valid TOML: {exc}") from None
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    names = [f.name for f in fields(TrainConfig)]
    out = {}
    for key, value in data.items():
        name = ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in names:
            raise UserError(f"{p}: unknown setting {key!r} (valid: {', '.join(names)})")
        try:
            out[name] = coerce(name, value)
        except ValueError as exc:
            raise UserError(f"{p}: {exc}") from None
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML (unset optional fields are written as comments)."""
    lines = ["# anglerank train: resolved configuration (reuse with --config)"]
    panel = None
    for f in in_panel_order():
        if f.metadata["panel"] != panel:
            panel = f.metadata["panel"]
            lines.append(f"\n# --- {panel} ---")
        v = getattr(cfg, f.name)
        if v is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def build_config(toml_path: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults <- TOML file <- ``overrides`` (values given on the command line; None is skipped)."""
    values = load_toml(toml_path) if toml_path else {}
    for k, v in overrides.items():
        if v is not None:
            values[k] = coerce(k, v)
    return TrainConfig(**values)
