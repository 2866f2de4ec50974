#!/usr/bin/env bash
# Stage: serve the merged model (else the default one) over OpenAI's API: start `llmctl serve` on a free port,
# ask two questions with curl (the second streamed over SSE), print /metrics lines, stop it with SIGTERM
# (graceful: in-flight requests finish, exit code 0).
set -euo pipefail
M=smol-alpaca
llmctl models show $M > /dev/null 2>&1 || M=smollm2-135m-instruct
PY="$(dirname "$(command -v llmctl)")/python"
LOG="$DEMO_OUT/serve.log"
llmctl serve --model $M --port 0 --max-concurrency 4 2> "$LOG" &
PID=$!
trap 'kill $PID 2> /dev/null || true' EXIT
URL=""
for _ in $(seq 600); do
  URL=$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -n 1 | cut -d' ' -f3 || true)
  [ -n "$URL" ] && break
  kill -0 $PID 2> /dev/null || { cat "$LOG"; exit 1; }
  sleep 1
done
grep -E "loading|serving|listening" "$LOG"
curl -s "$URL/v1/models"; echo
ask() {  # $1 = question, $2 = true|false (stream)
  printf '{"model": "%s", "messages": [{"role": "user", "content": "%s"}], "max_tokens": 48, "temperature": 0, "stream": %s}' \
    "$M" "$1" "$2"
}
echo "Q: What is the capital of France?"
curl -s "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d "$(ask 'What is the capital of France?' false)" \
  | "$PY" -c 'import json, sys; r = json.load(sys.stdin); print("A:", r["choices"][0]["message"]["content"]); print("usage:", r["usage"])'
echo "Q (streamed): Give three tips for staying healthy."
curl -sN "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d "$(ask 'Give three tips for staying healthy.' true)" \
  | "$PY" -c '
import json, sys
print("A: ", end="")
for line in sys.stdin:
    if line.startswith("data: {"):
        delta = json.loads(line[6:])["choices"][0]["delta"]
        print(delta.get("content") or "", end="", flush=True)
print()'
curl -s "$URL/metrics" | grep -E '^llmctl_(requests_total|prompt_tokens_total|generation_tokens_total|time_to_first_token_seconds_(sum|count)|queue_depth|running_sequences)' || true
kill -TERM $PID
set +e
wait $PID
code=$?
set -e
trap - EXIT
tail -n 2 "$LOG"
echo "(server stopped on SIGTERM with exit code $code)"
[ "$code" -eq 0 ]
