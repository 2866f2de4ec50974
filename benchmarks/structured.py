"""Per-token cost of JSON-schema decoding (llguidance) against free decoding, on the hf backend (issue 29).

The same engine and backend as `llmctl serve --backend hf`, in-process: one greedy sequence at a time, --tokens
new tokens, free and constrained by a schema whose string field is long enough (minLength) that both sides
generate the same number of tokens; alternated --repeats times after a warm-up; medians of seconds per token.
Goal: constrained ≤ 1.10x free.

Prints one JSON object. Run on an idle machine.

Examples:
    python benchmarks/structured.py --tokens 96 --repeats 5
    python benchmarks/structured.py --model tiny --tokens 16 --repeats 1      # quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 2000}, "done": {"type": "boolean"}},
    "required": ["story", "done"],
    "additionalProperties": False,
}


def run_once(engine, ids: list[int], params) -> tuple[float, int]:
    done, tokens = threading.Event(), [0]

    def sink(chunk):
        if chunk.finish_reason:
            tokens[0] = chunk.completion_tokens
            done.set()

    started = time.perf_counter()
    engine.submit(ids, params, 1, sink)
    done.wait(600)
    return time.perf_counter() - started, tokens[0]


def main() -> None:
    from llmctl.inference import backends
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine
    from llmctl.inference.sampling import SamplingParams
    from llmctl.inference.structured import json_grammar
    from llmctl.models.resolve import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    backend = backends.create("hf", resolve_model(args.model), BackendOptions(max_batch=1, device="cpu"))
    engine = Engine(backend, max_concurrency=1).start()
    codec = backend.codec
    ids = codec.encode(codec.apply_chat_template([{"role": "user", "content": "Tell a story as JSON."}]))
    free = SamplingParams(max_tokens=args.tokens, temperature=0)
    constrained = SamplingParams(max_tokens=args.tokens, temperature=0, grammar=json_grammar(SCHEMA))
    run_once(engine, ids, free)
    run_once(engine, ids, constrained)  # warm-up: llguidance builds its tokenizer view once per backend
    times: dict[str, list[float]] = {"free": [], "json_schema": []}
    counts: dict[str, list[int]] = {"free": [], "json_schema": []}
    for _ in range(args.repeats):
        for label, params in (("free", free), ("json_schema", constrained)):
            seconds, n = run_once(engine, ids, params)
            times[label].append(seconds / max(n, 1))
            counts[label].append(n)
    engine.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")  # fmt: skip
    print(json.dumps({
        "cpu": cpu, "model": args.model, "backend": "hf", "grammar_engine": "llguidance",
        "tokens": counts, "seconds_per_token": {k: round(v, 5) for k, v in med.items()},
        "overhead": round(med["json_schema"] / med["free"] - 1, 4), "goal": "<= 0.10",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
