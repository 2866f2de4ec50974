#!/usr/bin/env bash
# Stage: take the merged LoRA model where people run models: GGUF q8_0 for llama.cpp/Ollama, written by llmctl's
# converter, read back by transformers' GGUF loader and checked against the source (greedy tokens, logits,
# perplexity: the table below; exit 3 if perplexity rose past q8_0's 1 % gate), registered with its lineage.
set -euo pipefail
llmctl export --model smol-alpaca --format gguf --type q8_0 --output "$DEMO_OUT/smol-alpaca.Q8_0.gguf" \
  --name smol-alpaca-q8 --force
llmctl generate --model smol-alpaca-q8 --prompt "Give three tips for staying healthy." --max-new-tokens 32
llmctl models show smol-alpaca-q8
echo "(run it elsewhere: llama-cli -m $DEMO_OUT/smol-alpaca.Q8_0.gguf -cnv; see README \"Run your model elsewhere\")"
