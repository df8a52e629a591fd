"""Building a training run from its config: device, models, data, optimiser, curriculum, scorer.

Everything here happens once per run (or resume); the loop never changes what
it builds except through training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anglerank.curriculum import Curriculum, Ranking, sampler_class
from anglerank.data.values import get_dotted
from anglerank.errors import UserError
from anglerank.train.config import TrainConfig
from anglerank.train.pool import ANSWER_COLUMNS, Pool, load_pool
from anglerank.train.step import StepContext

__all__ = ["Parts", "build"]


@dataclass
class Parts:
    ctx: StepContext
    curriculum: Curriculum
    scorer: object
    eval_pool: Pool | None
    info: dict


def build(cfg: TrainConfig, ckpt: Path | None) -> Parts:
    """The run's parts; the policy comes from ``ckpt`` when resuming."""
    from anglerank.generation import pad_token_id
    from anglerank.render import Renderer
    from anglerank.scoring.engine import ScoreOptions, Scorer

    device, compute, amp_dtype = _precision(cfg)
    model, ref_model, tok, name, layer_idx, peft_model = _models(cfg, ckpt, device)
    renderer = Renderer(tok, cfg.preset, cfg.system, cfg.prefix, cfg.max_prompt_length)
    pool, eval_pool, reward_funcs = _data(cfg, renderer)
    curriculum = Curriculum(_initial_order(cfg, pool), cfg.curriculum())
    steps = -(-curriculum.subset_size // cfg.prompts_per_step)
    ctx = StepContext(cfg, model, ref_model, tok, _optimizer(cfg, model), pool, reward_funcs, layer_idx, device,
                      amp_dtype, pad_token_id(tok), max(1, cfg.epochs * steps * cfg.num_iterations),
                      torch.Generator().manual_seed(cfg.seed), peft=peft_model)
    score_opt = ScoreOptions(model=cfg.model, preset=cfg.preset, system=cfg.system, prefix=cfg.prefix,
                             site=cfg.site, layers=[cfg.layer], estimator=cfg.estimator,
                             max_length=cfg.max_prompt_length, dtype=compute, device=device,
                             batch_tokens=cfg.score_batch_tokens)
    scorer = Scorer(model, tok, renderer, score_opt, device)
    return Parts(ctx, curriculum, scorer, eval_pool, {"model": name, "device": device, "dtype": compute})


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
    from anglerank.scoring.engine import resolve_device, resolve_dtype

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
    from anglerank import hooks, models
    from anglerank.train import lora

    loaded = models.load(str(ckpt) if ckpt and not cfg.lora_r else cfg.model, device=device, dtype="float32")
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
        ref_model = models.load(cfg.model, device=device, dtype="float32").model
        ref_model.requires_grad_(False).eval()
    return model, ref_model, tok, loaded.name, layer_idx, peft_model


def _data(cfg: TrainConfig, renderer) -> tuple[Pool, Pool | None, list]:
    from anglerank import rewards

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
    if any(f in (rewards.math_reward, rewards.math_reward_any) for f in reward_funcs) and pool.answers is None:
        if pool.empty_answer_columns:
            raise UserError(f"the built-in math reward needs reference answers, but every value of "
                            f"{', '.join(pool.empty_answer_columns)} is null; fill it, or name the column that holds "
                            "them with --answer-column")
        raise UserError("the built-in math reward needs reference answers; pass --answer-column "
                        f"(looked for {', '.join(ANSWER_COLUMNS)})")
    return pool, eval_pool, reward_funcs


def _optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on matrices only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
