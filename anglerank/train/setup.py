"""Building a training run from its config: device, models, data, optimiser, curriculum, scorer.

Everything here happens once per run (or resume); the loop never changes what
it builds except through training.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

import numpy as np
import torch

from anglerank import rewards
from anglerank.curriculum import Curriculum, Ranking, sampler_class
from anglerank.data.values import get_dotted
from anglerank.errors import UserError
from anglerank.model import hooks, loading
from anglerank.model.device import resolve_device, resolve_dtype
from anglerank.model.generation import pad_token_id
from anglerank.model.render import Renderer
from anglerank.rewards import ANSWER
from anglerank.scoring.engine import Scorer
from anglerank.train import lora
from anglerank.train.config import TrainConfig
from anglerank.train.pool import ANSWER_COLUMNS, Pool, load_pool
from anglerank.train.step import StepContext

if TYPE_CHECKING:
    from anglerank.rewards import RewardSpec

__all__ = ["Parts", "Threads", "build", "checkpoint_bytes", "cpu_threads"]


@dataclass
class Parts:
    ctx: StepContext
    curriculum: Curriculum
    scorer: Scorer
    eval_pool: Pool | None
    info: dict
    notes: list = field(default_factory=list)  # start-up lines for the log (e.g. a checkpoint's size)


def build(cfg: TrainConfig, ckpt: Path | None, warn: Callable[[str], None] | None = None) -> Parts:
    """The run's parts; the policy comes from ``ckpt`` when resuming. ``warn`` hears about the scorer's
    out-of-memory back-offs."""
    device, compute, amp_dtype = _precision(cfg)
    model, ref_model, tok, name, layer_idx, peft_model = _models(cfg, ckpt, device)
    renderer = Renderer(tok, cfg.preset, cfg.system, cfg.prefix, cfg.max_prompt_length)
    pool, eval_pool, reward_funcs = _data(cfg, renderer)
    curriculum = Curriculum(_initial_order(cfg, pool), cfg.curriculum())
    steps = -(-curriculum.subset_size // cfg.prompts_per_step)
    ctx = StepContext(cfg, model, ref_model, tok, _optimizer(cfg, model), pool, reward_funcs, layer_idx, device,
                      amp_dtype, pad_token_id(tok), max(1, cfg.epochs * steps * cfg.num_iterations),
                      torch.Generator().manual_seed(cfg.seed), peft=peft_model)
    scorer = Scorer(model, tok, renderer, cfg.score_options(dtype=compute, device=device), device, warn=warn)
    return Parts(ctx, curriculum, scorer, eval_pool, {"model": name, "device": device, "dtype": compute},
                 [_checkpoint_note(cfg, peft_model or model, ctx.optimizer)])


def _initial_order(cfg: TrainConfig, pool: Pool) -> np.ndarray:
    """The ranking before training: the angle ranking is scored by the loop (identity until then); the
    others are fixed by the data and the seed."""
    ranking = Ranking.parse(cfg.ranking)
    n = len(pool.rows)
    if ranking.follows_policy or not sampler_class(cfg.sampler).uses_ranking:
        return np.arange(n)
    values = None
    if ranking.kind == "column":
        top, _, rest = ranking.column.partition(".")
        if top not in pool.columns:
            raise UserError(f"--ranking {ranking}: the training data has no column {top!r} (columns: "
                            f"{', '.join(pool.columns)})")
        values = [get_dotted(v, rest) if rest else v for v in pool.columns[top]]
    return ranking.order(n, seed=cfg.seed, lengths=[len(ids) for ids in pool.prompt_ids], values=values)


def _precision(cfg: TrainConfig) -> tuple[str, str, torch.dtype | None]:
    """(device, compute dtype name, autocast dtype); weights and optimiser stay float32."""
    device = resolve_device(cfg.device)
    compute = resolve_dtype(cfg.dtype, device)
    if compute == "float16":
        if cfg.dtype == "float16":
            raise UserError("--dtype float16 is not supported for training (no loss scaling); use bfloat16 or "
                            "float32")
        compute = "float32"
    return device, compute, torch.bfloat16 if compute == "bfloat16" else None


def _models(cfg: TrainConfig, ckpt: Path | None, device: str):
    """The policy (float32; with LoRA the base model with the adapter injected), the frozen reference for
    the KL term (beta > 0 without LoRA; with LoRA the same model, adapter off), the tokenizer, the peft
    wrapper (or None)."""
    loaded = loading.load(str(ckpt) if ckpt and not cfg.lora_r else cfg.model, device=device, dtype="float32")
    model, tok, peft_model = loaded.model, loaded.tokenizer, None
    if cfg.lora_r:
        peft_model = lora.attach(model, cfg, ckpt)
        model = peft_model.get_base_model()  # peft's layers are inside it: hooks and scoring see the adapter
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if peft_model is not None:  # frozen embeddings: let the checkpointed blocks' inputs carry gradients
            model.enable_input_require_grads()
    layer_idx = hooks.resolve_layer(model, cfg.layer)
    hooks.site_module(model, layer_idx, cfg.site)  # fails early on a bad site
    ref_model = None
    if cfg.beta > 0 and peft_model is None:
        ref_model = loading.load(cfg.model, device=device, dtype="float32").model
        ref_model.requires_grad_(False).eval()
    return model, ref_model, tok, loaded.name, layer_idx, peft_model


def _data(cfg: TrainConfig, renderer) -> tuple[Pool, Pool | None, list]:
    pool = load_pool(cfg.train_data, cfg, renderer, limit=cfg.limit)
    if not pool.rows:
        d = pool.dropped
        raise UserError(f"no usable training prompts among {pool.total_rows} rows: {d['no_answer']} without a "
                        f"reference answer in {pool.answer_column}, {d['null']} without prompt text, {d['too_long']} "
                        f"longer than --max-prompt-length {cfg.max_prompt_length}")
    eval_pool = None
    if cfg.eval_data:
        eval_pool = load_pool(cfg.eval_data, cfg, renderer, limit=None)
        if cfg.eval_limit and cfg.eval_limit < len(eval_pool.rows):
            rng = np.random.default_rng(cfg.seed + 1)
            eval_pool = eval_pool.subset(np.sort(rng.choice(len(eval_pool.rows), cfg.eval_limit, replace=False))
                                         .tolist())
    if eval_pool is not None and cfg.eval_by not in (None, "data_source") and cfg.eval_by not in eval_pool.columns:
        raise UserError(f"--eval-by {cfg.eval_by!r}: the eval data has no such column (columns: "
                        f"{', '.join(eval_pool.columns)})")
    reward_funcs = [rewards.load_reward(s, answer_format=cfg.answer_format) for s in cfg.reward]
    for spec in cfg.reward_specs:
        _check_columns(spec, pool)
    return pool, eval_pool, reward_funcs


def _check_columns(spec: RewardSpec, pool: Pool) -> None:
    """Refuse training data without a column a built-in reward reads, before the first rollout."""
    for column, holds in spec.columns.items():
        if column == ANSWER and pool.answers is None:  # the answer comes from --answer-column, not by its name
            _no_answers(spec.name, pool)
        elif column != ANSWER and column not in pool.columns:
            raise UserError(f"the {spec.name} reward needs a {column!r} column: {holds}")


def _no_answers(reward: str, pool: Pool) -> NoReturn:
    if pool.empty_answer_columns:
        raise UserError(f"the built-in {reward} reward needs reference answers, but every value of "
                        f"{', '.join(pool.empty_answer_columns)} is null; fill it, or name the column that holds "
                        "them with --answer-column")
    raise UserError(f"the built-in {reward} reward needs reference answers; pass --answer-column "
                    f"(looked for {', '.join(ANSWER_COLUMNS)})")


def _optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on matrices only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)


# --- shared CPUs and checkpoint sizes -----------------------------------------------------------

@dataclass(frozen=True)
class Threads:
    """The torch CPU threads of a run and what chose them."""

    n: int
    cores: int  # cores this process may run on (affinity, CPU quota)
    busy: int  # of those, busy with other work when the run started
    reason: str = ""  # what capped or set ``n``, when not the free cores

    def message(self) -> str:
        plural = "s" if self.n != 1 else ""
        why = f"; {self.reason}" if self.reason else ""
        return f"using {self.n} thread{plural} (of {self.cores} cores; {self.busy} busy{why})"


def cpu_threads(requested: int | None) -> Threads:
    """``requested`` (--threads), else the cores free at start-up, at most torch's current setting.

    torch's own default is one thread per core whether or not other work occupies it; every parallel region
    then waits for the thread that shares a core, so on a busy CPU the step slows many-fold (docs/train.md,
    "Smoke runs and laptops", has the measurements). A lower setting made by the caller (OMP_NUM_THREADS,
    ``torch.set_num_threads``) is kept.
    """
    cores = usable_cores()
    busy = busy_cores(cores)
    if requested:
        return Threads(requested, cores, busy, "--threads")
    free, current = max(1, cores - busy), torch.get_num_threads()
    if current < free:
        env = os.environ.get("OMP_NUM_THREADS")
        return Threads(current, cores, busy, f"OMP_NUM_THREADS={env}" if env else f"torch set to {current}")
    return Threads(free, cores, busy)


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, lowered by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def busy_cores(cores: int, window: float = 0.3) -> int:
    """Cores busy with other processes now: the machine's CPU time over ``window`` seconds (/proc/stat),
    without this process's own, rounded; elsewhere the 1-minute load average. A sample rather than the
    load average where possible: the average trails a job that started or ended in the last minute."""
    try:
        before, own = _cpu_times(), time.process_time()
        time.sleep(window)
        after, own = _cpu_times(), time.process_time() - own
        (busy0, total0, n), (busy1, total1, _) = before, after
        busy = n * (busy1 - busy0) / max(total1 - total0, 1) - own / window
    except (OSError, ValueError, IndexError):
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return min(cores, max(0, round(busy)))


def _cpu_times() -> tuple[int, int, int]:
    """(busy ticks, all ticks, CPUs) of the whole machine, from /proc/stat."""
    lines = Path("/proc/stat").read_text().splitlines()
    ticks = [int(x) for x in lines[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    all_ticks = sum(ticks[:8])  # guest time is already counted in user
    return all_ticks - idle, all_ticks, sum(1 for x in lines if x.startswith("cpu") and x[3:4].isdigit())


def checkpoint_bytes(model, optimizer: torch.optim.Optimizer | None) -> tuple[int, int, int]:
    """(parameters saved, bytes of weights, bytes of optimiser state) of one checkpoint of ``model``.

    The weights are every parameter once (tied ones once), or the trainable ones for a peft model (its
    adapter); the optimiser state is AdamW's two moments per trainable element, in the parameter's dtype, and
    its step count per tensor. Computed before the first update, when the optimiser holds no state yet.
    """
    adapter = hasattr(model, "peft_config")
    params = [p for p in model.parameters() if p.requires_grad or not adapter]
    weights = sum(p.numel() * p.element_size() for p in params)
    state = 0
    if optimizer is not None:
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        state = sum(2 * p.numel() * p.element_size() + 4 for p in trainable)
    return sum(p.numel() for p in params), weights, state


def _checkpoint_note(cfg: TrainConfig, model, optimizer) -> str:
    n, weights, state = checkpoint_bytes(model, None if cfg.save_only_model else optimizer)
    what = "adapter" if hasattr(model, "peft_config") else "weights"
    count = f"{n / 1e6:,.1f}M" if n >= 1e6 else f"{n:,}"
    size = f"{_gb(weights)} {what} ({count} parameters x {weights // max(n, 1)} bytes)"
    size += " + " + (f"{_gb(state)} AdamW state" if state else "no optimiser state (--save-only-model)")
    return (f"each checkpoint: about {_gb(weights + state)}: {size}; the newest {cfg.save_total_limit} kept "
            f"(--save-total-limit), one more while the next is written")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
