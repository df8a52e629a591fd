#!/usr/bin/env bash
# GRPO with GAIN-RL sampling in verl (tested: 0.7.1, 0.8.0, 0.9.1).
#
#   anglerank score train.parquet -o scores/
#   anglerank rank scores/ --data train.parquet -o ranked.parquet
#   bash examples/verl_gainrl.sh ranked.parquet test.parquet Qwen/Qwen2.5-0.5B-Instruct [more overrides]
#
# On the `make demo` set (240 rows, verl layout; data_source openai/gsm8k, so verl's GSM8K
# checker rewards it) rank .demo/scores into .demo/ranked.parquet first, and take a subset
# below 240 rows: GAINRL_SUBSET_SIZE=128 bash examples/verl_gainrl.sh .demo/ranked.parquet
# .demo/test.parquet MODEL. GAINRL_SUBSET_SIZE (default 256, the authors' value) is the
# prompts per epoch; a subset of all the rows is warned about (every epoch is the whole set).
#
# verl 0.5 to 0.7 take the sampler through their data.sampler curriculum hook; verl 0.8
# removed it, so there anglerank.integrations.verl_main runs verl's own main_ppo with
# trainers that draw GAIN-RL epochs (it adds data.dataloader_num_workers=0): on verl 0.9 the
# current V1 trainer in its sync mode (verl's default; it needs `pip install TransferQueue`),
# or with trainer.use_v1=False verl's deprecated RayPPOTrainer. The flags are the same.
# One verl epoch = one GAIN-RL subset of data.gainrl.subset_size prompts (rounded down to
# whole data.train_batch_size batches), so trainer.total_epochs counts GAIN-RL epochs.
# Rank-unit options (mu0, sigma, step, adj_min, adj_max) take ranks (an int) or fractions of
# the data set size (a float <= 1); the `+` is needed because data.gainrl is not part of
# verl's config schema. Add your cluster's trainer.n_gpus_per_node, rollout engine and
# parallelism flags after the three positional arguments.
set -euo pipefail
TRAIN=${1:?ranked train Parquet}
VAL=${2:?validation Parquet}
MODEL=${3:?model id or folder}
shift 3
SUBSET_SIZE=${GAINRL_SUBSET_SIZE:-256}

if python3 -c 'import sys, verl; sys.exit(tuple(int(x) for x in verl.__version__.split(".")[:2]) < (0, 8))'; then
    ENTRY=(-m anglerank.integrations.verl_main)
    HOOK=()
else
    ENTRY=(-m verl.trainer.main_ppo)
    HOOK=(data.dataloader_num_workers=0
          data.sampler.class_path=pkg://anglerank.integrations.verl
          data.sampler.class_name=GainRLSampler)
fi

python3 "${ENTRY[@]}" \
    algorithm.adv_estimator=grpo \
    data.train_files="$TRAIN" \
    data.val_files="$VAL" \
    data.train_batch_size=64 \
    data.max_prompt_length=512 \
    data.max_response_length=512 \
    "${HOOK[@]}" \
    +data.gainrl.subset_size="$SUBSET_SIZE" \
    +data.gainrl.sigma=0.1333 \
    +data.gainrl.step=0.0667 \
    +data.gainrl.adj_min=0.0 \
    +data.gainrl.adj_max=0.1333 \
    +data.gainrl.seed=0 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.005 \
    actor_rollout_ref.actor.grad_clip=0.1 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.temperature=0.9 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
    trainer.total_epochs=200 \
    trainer.save_freq=20 \
    trainer.logger='["console"]' \
    "$@"
