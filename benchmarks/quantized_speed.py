"""CPU generation speed of the default model: fp32 HF vs every quantized format, in one run.

Each format is made with `llmctl quantize` (or reused from --home if an entry of that name exists),
loaded by name through llmctl's loaders and timed through `llmctl generate`'s service (greedy,
--new-tokens tokens, best of --repeats after one warm-up call). The plain baseline is `model.generate` on the fp32 HF
model without llmctl. Prints JSON: tokens/s, ratio to fp32 HF, size on disk of each format.

Usage:
    python benchmarks/quantized_speed.py                                   # all formats
    python benchmarks/quantized_speed.py --formats fp32,openvino-int8 --new-tokens 32 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

FORMATS = {
    # quantize's default layout: compressed-tensors, decompressed into float Linear layers at load
    "ct-rtn4": ["algo=rtn", "bits=4", "group_size=128"],
    "inc-rtn4": ["algo=rtn", "bits=4", "group_size=128", "save_format=inc"],
    "inc-int8": ["algo=dynamic-int8", "bits=8"],
    "openvino-int8": ["backend=openvino", "bits=8", "group_size=-1"],
    "openvino-int4": ["backend=openvino", "bits=4", "group_size=128"],
    "bnb-nf4": ["backend=bnb", "bits=4"],
}
PROMPT = "Write a short story about a robot who learns to paint. Describe each step in detail."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--formats", default="fp32," + ",".join(FORMATS))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--home", default=None, help="LLMCTL_HOME to reuse quantized entries from")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.home:
        os.environ["LLMCTL_HOME"] = args.home
    os.environ.setdefault("LLMCTL_HOME", tempfile.mkdtemp(prefix="llmctl-bench-"))

    import torch

    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import generate
    from llmctl.models.loading import load_model
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model
    from llmctl.paths import dir_size_mb
    from llmctl.quantize import quantize

    torch.set_num_threads(args.threads)
    gen_cfg = resolve_config("generate", None, [f"max_new_tokens={args.new_tokens}", "dtype=float32", "device=cpu"], {})
    warm_cfg = resolve_config("generate", None, ["max_new_tokens=4", "dtype=float32", "device=cpu"], {})
    src = resolve_model(args.model)
    results: dict = {"settings": vars(args), "runs": {}}

    def timed(loaded) -> dict:
        generate(args.model, [{"id": 0, "prompt": PROMPT}], warm_cfg, loaded=loaded)  # first-call setup off the clock
        best = None
        for _ in range(args.repeats):
            r = generate(args.model, [{"id": 1, "prompt": PROMPT}], gen_cfg, loaded=loaded)
            if best is None or r.stats["tokens_per_s"] > best["tokens_per_s"]:
                best = r.stats
        return best

    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        print(f"[{time.strftime('%H:%M:%S')}] {fmt} …", file=sys.stderr, flush=True)
        if fmt == "fp32":
            loaded = load_model(src, dtype="float32", device="cpu")
            # plain baseline: HF generate without llmctl
            tok = loaded.tokenizer
            text = tok.apply_chat_template(
                [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
            )
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
            plain = 0.0
            with torch.inference_mode():  # first-call setup off the clock, as for every other side
                loaded.model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
            for _ in range(args.repeats):
                t = time.perf_counter()
                with torch.inference_mode():
                    out = loaded.model.generate(
                        **enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                    )
                n = out.shape[1] - enc["input_ids"].shape[1]
                plain = max(plain, n / (time.perf_counter() - t))
            results["runs"]["fp32-plain-hf"] = {"tokens_per_s": round(plain, 2), "size_mb": dir_size_mb(src.path)}
            s = timed(loaded)
            results["runs"]["fp32"] = {
                "tokens_per_s": s["tokens_per_s"],
                "new_tokens": s["new_tokens"],
                "size_mb": dir_size_mb(src.path),
            }
        else:
            name = f"speed-{fmt}"
            reg = Registry()
            if reg.find(name) is None:
                cfg = resolve_config("quantize", None, FORMATS[fmt] + ["eval.tokens=0"], {})
                quantize(args.model, name, cfg, command=f"benchmarks/quantized_speed.py {fmt}")
            loaded = load_model(name, dtype="float32", device="cpu")
            if fmt.startswith("openvino"):
                loaded.model.ov_config["INFERENCE_NUM_THREADS"] = str(args.threads)
                loaded.model.request = None
                loaded.model.compile()
            s = timed(loaded)
            results["runs"][fmt] = {
                "tokens_per_s": s["tokens_per_s"],
                "new_tokens": s["new_tokens"],
                "size_mb": dir_size_mb(reg.get(name).path),
            }
        print(f"  {fmt}: {results['runs'][fmt]}", file=sys.stderr, flush=True)
        del loaded
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=2)
    base = results["runs"].get("fp32-plain-hf", {}).get("tokens_per_s")
    if base:
        for r in results["runs"].values():
            r["speedup_vs_fp32_hf"] = round(r["tokens_per_s"] / base, 2)
        best = max(results["runs"].items(), key=lambda kv: kv[1]["tokens_per_s"])
        results["best"] = {
            "format": best[0],
            "speedup_vs_fp32_hf": best[1]["speedup_vs_fp32_hf"],
            "goal_3x": best[1]["speedup_vs_fp32_hf"] >= 3,
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
