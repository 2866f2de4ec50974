#!/usr/bin/env bash
# Stage: LoRA-finetune the default model on 64 Alpaca examples for a few steps (response-only loss, packed
# sequences, 4 held out for eval loss), answer with the adapter directly, merge it into a plain model
# (logits checked against base + adapter), and answer with the merged model.
set -euo pipefail
DATA="$SHARED/data/alpaca/alpaca_2000.json"
llmctl finetune --model smollm2-135m-instruct --method lora --data "$DATA" --name smol-alpaca-lora \
  --set data.max_examples=64 --set data.eval_split=4 --set train.warmup_steps=1 --set train.log_every=1 \
  --max-steps 3 --batch-size 2 --seq-len 192 --eval-every 3 --force
ls "$LLMCTL_HOME/runs/smol-alpaca-lora"
llmctl generate --model smol-alpaca-lora --prompt "Give three tips for staying healthy." --max-new-tokens 32
llmctl merge-lora --adapter smol-alpaca-lora --name smol-alpaca --force
llmctl merge-lora --adapter smol-alpaca --name smol-alpaca-twice      # already merged: says so, does nothing
llmctl generate --model smol-alpaca --prompt "Give three tips for staying healthy." --max-new-tokens 32
llmctl models show smol-alpaca
