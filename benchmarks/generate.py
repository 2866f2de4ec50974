"""Benchmark: `llmctl generate` vs plain transformers `generate` on the same model, prompts and settings.

Greedy decoding, 128 new tokens, batch 1 and batch 8, both in this one process, alternating runs.
Prints JSON with tokens/s of both and the ratio (goal: ratio >= 0.95, i.e. no overhead).

Examples:
    .venv/bin/python benchmarks/generate.py
    .venv/bin/python benchmarks/generate.py --model tiny-path --new-tokens 32 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a bicycle works.",
    "Describe the water cycle step by step.",
    "List and explain ten tips for learning a new language.",
    "Tell me about the history of the printing press.",
    "Write a detailed recipe for a chocolate cake.",
    "Explain how the internet routes a message from one computer to another.",
    "Describe a day in the life of a lighthouse keeper.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("LLMCTL_HOME", os.environ.get("LLMCTL_BENCH_HOME", tempfile.mkdtemp(prefix="llmctl-bench-")))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import generate
    from llmctl.models.loading import load_model
    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(args.model)  # converts the default model on first use
    t0 = time.perf_counter()
    loaded = load_model(resolved, dtype="float32", device="cpu")
    llmctl_load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    hf_model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(resolved.path)
    hf_load_s = time.perf_counter() - t0
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    hf_tok.padding_side = "left"

    results = {
        "model": args.model,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "load_seconds": {"llmctl": round(llmctl_load_s, 3), "transformers": round(hf_load_s, 3)},
    }
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        config = resolve_config(
            "generate",
            explicit={"max_new_tokens": args.new_tokens, "batch_size": bs, "device": "cpu", "dtype": "float32"},
        )
        best = {"llmctl": 0.0, "transformers": 0.0}
        same = True
        for _ in range(args.repeats):
            res = generate(args.model, [{"id": i, "prompt": p} for i, p in enumerate(prompts)], config, loaded=loaded)
            best["llmctl"] = max(best["llmctl"], res.stats["tokens_per_s"])

            texts = [
                hf_tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                for p in prompts
            ]
            enc = hf_tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = hf_model.generate(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    max_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=hf_tok.pad_token_id,
                )
            secs = time.perf_counter() - t0
            new = out[:, enc["input_ids"].shape[1] :]
            eos = hf_model.generation_config.eos_token_id
            count = 0
            for row in new.tolist():
                count += next((k + 1 for k, t in enumerate(row) if t == eos), len(row))
            best["transformers"] = max(best["transformers"], count / secs)
            hf_texts = [hf_tok.decode(r, skip_special_tokens=True) for r in new]
            same = same and sorted(hf_texts) == sorted(r["output"] for r in res.items)
        results[f"batch_{bs}"] = {
            "llmctl_tokens_per_s": round(best["llmctl"], 2),
            "transformers_tokens_per_s": round(best["transformers"], 2),
            "ratio": round(best["llmctl"] / best["transformers"], 3),
            "same_outputs": same,
        }
    ratios = [v["ratio"] for k, v in results.items() if k.startswith("batch_")]
    results["min_ratio"] = min(ratios)
    results["goal"] = "min_ratio >= 0.95"
    results["goal_met"] = min(ratios) >= 0.95
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
