"""Long context: passkey retrieval of the default model past its trained context, and a YaRN context extension.

Part 1 (`passkey`): the default model (SmolLM2-135M, trained context 8,192) at 1x, 2x and 4x its context with no
scaling, dynamic NTK and YaRN (`--factor`, default 4: one setting covers every length), passkey accuracy per length
(`llmctl.evaluate.passkey`: `--samples` prompts per (length, depth) cell, `--depths`). Goal: at 2x, YaRN or dynamic
>= 0.8 where no scaling is <= 0.2. On CPU a 32k-token forward pass of this model takes many minutes: keep the
samples few, or pass `--lengths` (stated in the output either way).

Part 2 (`extend`): the `shakespeare-tiny` model (512 positions) pretrained here (`--pretrain-steps`, the profile's 600),
then extended to 2,048 by a short full finetune with `--rope-scaling yarn --rope-factor 4 --seq-len 2048` on the
first 90% of tiny-shakespeare; perplexity by position bucket (512, 1024, 2048) on the last 10% before (no
scaling), before with YaRN x4 and no finetune, and after.

Usage:
    python benchmarks/long_context.py                                   # both parts, defaults (hours on 2 CPU cores)
    python benchmarks/long_context.py --part passkey --lengths 2048,4096 --depths 0.5 --samples 1   # smoke
    python benchmarks/long_context.py --part extend --pretrain-steps 10 --extend-steps 4 --buckets 128,256,512
Prints one JSON object on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _shakespeare import TEXT, llmctl, tokenize_shakespeare  # noqa: E402


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# ---- part 1: passkey ---------------------------------------------------------------------------------------


def passkey_part(args) -> dict:
    from llmctl.evaluate.passkey import run_passkey
    from llmctl.models.loading import load_model

    pconfig = {"context_lengths": args.lengths, "depths": args.depths, "samples": args.samples, "digits": 5}
    methods = {
        "none": None,
        "dynamic": {"scaling": "dynamic", "factor": args.factor, "original_max_length": None},
        "yarn": {"scaling": "yarn", "factor": args.factor, "original_max_length": None},
    }
    out: dict = {
        "model": args.model,
        "lengths": args.lengths,
        "depths": args.depths,
        "samples_per_cell": args.samples,
        "prompts_per_length": len(args.depths) * args.samples,
        "factor": args.factor,
        "device": args.device,
        "methods": {},
    }
    for name, rope in methods.items():
        loaded = load_model(args.model, dtype="float32", device=args.device, rope=rope)
        out["trained_context"] = out.get("trained_context") or loaded.model.config.max_position_embeddings
        t0 = time.perf_counter()
        res = run_passkey(loaded, pconfig, seed=args.seed, progress=lambda m, n=name: say(f"{n}: {m}"))
        seconds = time.perf_counter() - t0
        out["methods"][name] = {
            "acc_by_length": {n: round(res["block"][f"acc@{n},none"], 3) for n in args.lengths},
            "table_depth_by_length": res["config"]["table"],
            "seconds": round(seconds, 1),
            "seconds_per_prompt": round(seconds / (len(args.lengths) * len(args.depths) * args.samples), 1),
        }
        say(f"{name}: {out['methods'][name]['acc_by_length']} in {seconds:.0f} s")
        del loaded
    two_x = 2 * out["trained_context"]
    if two_x in args.lengths:
        m = out["methods"]
        best = max(m["dynamic"]["acc_by_length"][two_x], m["yarn"]["acc_by_length"][two_x])
        out["goal_at_2x"] = {
            "none": m["none"]["acc_by_length"][two_x],
            "best_scaled": best,
            "goal": "best_scaled >= 0.8 where none <= 0.2",
        }
    return out


# ---- part 2: context extension ----------------------------------------------------------------------------


def bucket_ppl(model: str, text: Path, buckets: list[int], rope: dict | None, device: str) -> dict:
    from llmctl.config.profiles import resolve_config
    from llmctl.evaluate import run_eval

    explicit = {
        "perplexity.data": str(text),
        "perplexity.length_buckets": buckets,
        "device": device,
        "dtype": "float32",
    }
    if rope:
        explicit.update({"rope.scaling": rope["scaling"], "rope.factor": rope["factor"]})
    res = run_eval(model, ["perplexity"], resolve_config("eval", None, [], explicit), attach=False)
    return {k.split("@")[1]: round(v, 3) for k, v in res.metrics.items() if "@" in k}


def extend_part(args) -> dict:
    home = Path(args.home or tempfile.mkdtemp(prefix="llmctl-longctx-"))
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    os.environ["LLMCTL_HOME"] = str(home)  # the in-process run_eval reads the same registry
    home.mkdir(parents=True, exist_ok=True)
    text = TEXT.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    held = home / "heldout.txt"
    held.write_text(text[cut:], encoding="utf-8")
    chunks = [text[i : i + 12000] for i in range(0, cut, 12000)]  # ~3k tokens each: rows fill 2,048 when packed
    train = home / "train.jsonl"
    train.write_text("".join(json.dumps({"text": c}) + "\n" for c in chunks), encoding="utf-8")
    data = home / "data" / "shakespeare"
    t0 = time.perf_counter()
    if not (home / "models" / "sp-tiny").exists():
        tokenize_shakespeare(data, env=env)
        say(f"pretraining sp-tiny for {args.pretrain_steps} steps …")
        llmctl(
            "pretrain",
            "--profile",
            "shakespeare-tiny",
            "--data",
            str(data),
            "--name",
            "sp-tiny",
            "--max-steps",
            str(args.pretrain_steps),
            "--json",
            "--force",
            env=env,
        )
    pretrain_s = time.perf_counter() - t0
    yarn = {"scaling": "yarn", "factor": 4.0}
    before = bucket_ppl("sp-tiny", held, args.buckets, None, args.device)
    say(f"before: {before}")
    before_yarn = bucket_ppl("sp-tiny", held, args.buckets, yarn, args.device)
    say(f"before, yarn x4 without finetuning: {before_yarn}")
    t1 = time.perf_counter()
    ft = json.loads(
        llmctl(
            "finetune",
            "--model",
            "sp-tiny",
            "--method",
            "full",
            "--data",
            str(train),
            "--name",
            "sp-tiny-2k",
            "--rope-scaling",
            "yarn",
            "--rope-factor",
            "4",
            "--seq-len",
            str(args.buckets[-1]),
            "--batch-size",
            str(args.extend_batch),
            "--max-steps",
            str(args.extend_steps),
            "--lr",
            str(args.extend_lr),
            "--set",
            "data.eval_split=0",
            "--set",
            "train.warmup_steps=5",
            "--save-every",
            "0",
            "--json",
            "--force",
            env=env,
        )
    )
    extend_s = time.perf_counter() - t1
    after = bucket_ppl("sp-tiny-2k", held, args.buckets, None, args.device)
    say(f"after: {after}")
    return {
        "model": "shakespeare-tiny (512 positions)",
        "extension": "yarn x4, full finetune",
        "extend_steps": args.extend_steps,
        "extend_batch": args.extend_batch,
        "extend_seq_len": args.buckets[-1],
        "extend_tokens": ft["metrics"].get("tokens"),
        "extend_seconds": round(extend_s, 1),
        "pretrain_steps": args.pretrain_steps,
        "pretrain_seconds": round(pretrain_s, 1),
        "heldout_chars": len(text) - cut,
        "perplexity_by_bucket": {"before": before, "before_yarn_no_finetune": before_yarn, "after": after},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["passkey", "extend", "both"], default="both")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lengths", type=ints, default=[8192, 16384, 32768])
    ap.add_argument("--depths", type=floats, default=[0.0, 0.5, 1.0])
    ap.add_argument("--samples", type=int, default=1, help="prompts per (length, depth) cell")
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--home", default=None, help="LLMCTL_HOME for part 2 (default: a temp dir); reused when set")
    ap.add_argument("--pretrain-steps", type=int, default=600, help="shakespeare-tiny steps (the profile's 600)")
    ap.add_argument("--buckets", type=ints, default=[512, 1024, 2048])
    ap.add_argument("--extend-steps", type=int, default=100)
    ap.add_argument("--extend-batch", type=int, default=4)
    ap.add_argument("--extend-lr", type=float, default=3e-4)
    args = ap.parse_args()
    report: dict = {"benchmark": "long_context", "cpu_threads": __import__("torch").get_num_threads()}
    if args.part in ("passkey", "both"):
        report["passkey"] = passkey_part(args)
    if args.part in ("extend", "both"):
        report["extend"] = extend_part(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
