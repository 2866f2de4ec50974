"""Greedy single-stream tokens/s of `llmctl serve --backend hf`: this checkout against another one, same run.

Issue 29 asks that failure isolation, validation, structured output and tool calling leave plain greedy
decoding as fast as before (±3 %). --baseline DIR is a checkout of the earlier commit (e.g. a `git worktree`,
with `llmctl/cli -> ../commands` and `llmctl/builtin_profiles -> ../profiles` links so it imports from there);
both servers run with this interpreter, alternately --rounds times, 128 new tokens streamed; best of 2 per
round, median over rounds.

Examples:
    git worktree add /tmp/old c3f7c04 && ln -s ../commands /tmp/old/llmctl/cli && \\
        ln -s ../profiles /tmp/old/llmctl/builtin_profiles
    python benchmarks/serve_ab.py --baseline /tmp/old --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import Server, single_stream  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def server(repo: Path, model: str) -> Server:
    cmd = [sys.executable, "-c", "from llmctl.cli.main import run; run()", "serve", "--model", model, "--backend",
           "hf", "--port", "0", "--threads", "2"]  # fmt: skip
    return Server(cmd, r"listening on (http://[\d.]+:\d+)", env={"PYTHONPATH": str(repo)}, cwd=str(repo)).wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="checkout of the earlier commit")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    sides = {"baseline": Path(args.baseline).resolve(), "this": REPO_ROOT}
    tps: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for label, repo in sides.items():
            srv = server(repo, args.model)
            try:
                tps[label].append(single_stream(srv.url, args.model, args.new_tokens, 2)["tokens_per_s"])
            finally:
                srv.stop()
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(json.dumps({"tokens_per_s": tps, "median": med, "ratio": round(med["this"] / med["baseline"], 4),
                      "goal": "ratio within 0.97-1.03"}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
