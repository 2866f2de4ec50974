#!/usr/bin/env bash
# Stage: RLHF's last two stages on the shared HH-RLHF pairs (whole dialogues, split at the last assistant turn):
# a reward model (LoRA + scalar head, a few steps), its pair accuracy on held-out pairs with
# `eval --tasks reward_accuracy`, then PPO against it: a few rollouts with the reward and the KL to the start
# model logged at every step. The numbers of so short a run mean little; benchmarks/align_quality.py measures.
set -euo pipefail
HH="$SHARED/data/hh-rlhf/harmless-base-1800.jsonl"
head -n 1700 "$HH" > "$DEMO_OUT/hh-train.jsonl"
tail -n 100 "$HH" > "$DEMO_OUT/hh-heldout.jsonl"
llmctl finetune --profile reward --model smollm2-135m-instruct --data "$DEMO_OUT/hh-train.jsonl" --name smol-rm \
  --set data.max_examples=48 --set data.eval_split=8 --set train.warmup_steps=1 --set train.log_every=1 \
  --max-steps 3 --batch-size 4 --seq-len 256 --eval-every 3 --force
llmctl eval --model smol-rm --tasks reward_accuracy --data "$DEMO_OUT/hh-heldout.jsonl" \
  --set reward_accuracy.max_pairs=16 --set reward_accuracy.seq_len=256
llmctl finetune --profile ppo --model smollm2-135m-instruct --reward-model smol-rm --data "$DEMO_OUT/hh-train.jsonl" \
  --name smol-ppo --set data.max_examples=40 --set data.eval_split=4 --set ppo.rollout_batch=4 --set ppo.epochs=2 \
  --set rollout.max_new_tokens=12 --set train.warmup_steps=1 --set train.log_every=1 --set train.eval_batches=1 \
  --max-steps 3 --batch-size 2 --seq-len 256 --eval-every 3 --force
llmctl models show smol-ppo     # parents: the base and the reward model
