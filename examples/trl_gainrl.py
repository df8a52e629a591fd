"""GRPO with GAIN-RL sampling in TRL: the recipe, runnable as is.

Rank the training data once, then train::

    anglerank score train.parquet -o scores/
    anglerank rank scores/ --data train.parquet -o ranked.parquet
    python examples/trl_gainrl.py --data ranked.parquet --model Qwen/Qwen2.5-0.5B-Instruct

The data is the verl layout that `anglerank rank` keeps (``prompt`` = chat
messages, ``reward_model.ground_truth`` = the final answer; `make demo` writes it)
plus the ``angle_*`` columns; plain ``question`` / ``answer`` columns work too. Training settings default to the authors' (docs/method.md,
"The training loop"; bf16 on a GPU); the GAIN-RL rank-unit options accept ranks or
fractions of the data set size. ``--resume`` continues from the last
checkpoint in ``--output-dir``, curriculum included.

A CPU smoke run with the embedded SmolLM2 (leave out ``--model``)::

    python examples/trl_gainrl.py --data ranked.parquet --max-rows 48 --subset-size 8 \\
        --epochs 2 --num-generations 2 --batch-size 4 --max-completion-length 16
"""

from __future__ import annotations

import argparse
import json
import os


def correctness_reward(completions, reward_model=None, answer=None, **kwargs) -> list[float]:
    """1.0 when the completion's final answer (``\\boxed{}`` or ``####``) matches the reference:
    ``reward_model.ground_truth`` (the verl layout), else the ``answer`` column."""
    from anglerank.rewards import math_reward

    if reward_model is None:
        return math_reward(None, completions, answer=answer)
    answers = [rm["ground_truth"] if isinstance(rm, dict) else rm for rm in reward_model]
    return math_reward(None, completions, answer=answers)


def as_chat_prompts(train):
    """Plain ``question`` rows as the one-message chat ``prompt`` TRL reads (verl-layout data is kept)."""
    if "prompt" in train.column_names or "question" not in train.column_names:
        return train
    return train.map(lambda row: {"prompt": [{"role": "user", "content": row["question"]}]})


def main(argv: list[str] | None = None) -> None:
    from anglerank.curriculum import DEFAULTS, HELP, parse_rank_value

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="ranked Parquet written by `anglerank rank`")
    p.add_argument("--model", default=None, help="HF id or folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--output-dir", default="gainrl-grpo")
    p.add_argument("--epochs", type=int, default=200, help="GAIN-RL epochs (one subset each)")
    p.add_argument("--subset-size", type=int, default=DEFAULTS["subset_size"], help=HELP["subset_size"])
    for name in ("sigma", "step", "adj_min", "adj_max"):
        p.add_argument(f"--{name.replace('_', '-')}", type=parse_rank_value, default=DEFAULTS[name],
                       help=HELP[name] + " An integer is ranks, a float <= 1 a fraction of N.")
    p.add_argument("--correct-threshold", type=float, default=DEFAULTS["correct_threshold"],
                   help=HELP["correct_threshold"])
    p.add_argument("--angle", default="angle_score", help="column for the angle term, or a number such as 0")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="per-device train batch size (completions)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-completion-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--max-rows", type=int, default=None, help="train on the first N rows only (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    a = p.parse_args(argv)

    import torch
    from datasets import load_dataset
    from trl import GRPOConfig

    from anglerank.integrations.trl import GainRLConfig, GainRLGRPOTrainer
    from anglerank.model.loading import resolve_model_path

    train = as_chat_prompts(load_dataset("parquet", data_files=a.data, split="train"))
    if a.max_rows:
        train = train.select(range(min(a.max_rows, len(train))))
    angle: str | float = a.angle
    try:
        angle = float(a.angle)
    except ValueError:
        pass

    gpu = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=a.output_dir,
        num_train_epochs=a.epochs,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        temperature=0.9,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        max_grad_norm=0.1,
        beta=0.005,
        bf16=gpu,
        use_cpu=not gpu,
        seed=a.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=a.save_steps,
        report_to="none",
    )
    trainer = GainRLGRPOTrainer(
        model=str(resolve_model_path(a.model)),
        reward_funcs=correctness_reward,
        args=args,
        train_dataset=train,
        gainrl=GainRLConfig(
            subset_size=a.subset_size, sigma=a.sigma, step=a.step, adj_min=a.adj_min, adj_max=a.adj_max,
            correct_threshold=a.correct_threshold, angle=angle,
        ),
    )
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    trainer.save_model(a.output_dir)
    trainer.save_gainrl_state(a.output_dir)
    print(json.dumps({"mu": trainer.gainrl.mu, "epochs": trainer.gainrl.epochs}, indent=1))
    print(f"model and curriculum saved to {os.path.abspath(a.output_dir)}")


if __name__ == "__main__":
    main()
