#!/usr/bin/env bash
# The llmctl lifecycle demo, offline, on the default model: runs every stage in demo/stages in order.
# Usage: make demo   (or: bash demo/run.sh with llmctl on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
export LLMCTL_HOME="${LLMCTL_HOME:-$PWD/demo-out/home}"
export DEMO_OUT="${DEMO_OUT:-$PWD/demo-out}"
export SHARED="${SHARED:-$(cd .. && pwd)/shared}"
mkdir -p "$DEMO_OUT"
echo "== llmctl demo (LLMCTL_HOME=$LLMCTL_HOME)"
TIMES=()
START=$SECONDS
# The warm worker (`llmctl worker`, docs/commands/worker.md): the demo's ~50 commands fork from one process that
# imported torch, transformers and peft once instead of each paying seconds of start-up. LLMCTL_WORKER=0 skips it.
if [ "${LLMCTL_WORKER:-1}" != 0 ]; then
  echo "== worker"
  t0=$SECONDS
  llmctl worker start --idle-timeout 0
  trap 'llmctl worker stop' EXIT
  TIMES+=("$(printf '%-16s %5d s' "worker start" $((SECONDS - t0)))")
fi
for stage in demo/stages/*.sh; do
  echo
  echo "== stage: $(basename "$stage" .sh)"
  t0=$SECONDS
  bash "$stage"
  TIMES+=("$(printf '%-16s %5d s' "$(basename "$stage" .sh)" $((SECONDS - t0)))")
done
echo
echo "== registry after the demo"
llmctl models list
echo
echo "== wall time per stage"
printf '%s\n' "${TIMES[@]}"
printf '%-16s %5d s\n' "total" $((SECONDS - START))
