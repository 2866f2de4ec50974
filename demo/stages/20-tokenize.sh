#!/usr/bin/env bash
# Stage: train a byte-level BPE on tiny-shakespeare, look at it, and encode the text into train/val token
# shards for pretraining ($DEMO_OUT/data/shakespeare, registered as shakespeare-data).
set -euo pipefail
TEXT="$SHARED/data/tinyshakespeare/input.txt"
llmctl tokenize train --input "$TEXT" --type bpe --vocab-size 4096 --name shakespeare-bpe --force
llmctl tokenize show --tokenizer shakespeare-bpe "To be, or not to be, that is the question."
llmctl tokenize stats --tokenizer shakespeare-bpe --input "$TEXT" --top-k 8
llmctl tokenize encode --tokenizer shakespeare-bpe --input "$TEXT" --output "$DEMO_OUT/data/shakespeare" \
  --name shakespeare-data --val-fraction 0.1 --dedup \
  --decontaminate "$SHARED/data/hellaswag/hellaswag_val_1000.jsonl" --force
