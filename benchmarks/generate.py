"""Benchmark: `llmctl generate` vs plain transformers `generate`, and the default backend vs hf vs llama.cpp.

Part 1: greedy decoding, 128 new tokens, batch 1 and batch 8, llmctl's hf path and plain transformers in this
one process, alternating runs (goal: ratio >= 0.95, i.e. no overhead). Part 2 (`default_vs_hf`): what
`--backend auto` runs (the fp32 OpenVINO IR, made once here and timed) against `--backend hf` and, where
llama-cpp-python is installed, `--backend llamacpp` on the entry's GGUF: 96 new tokens greedy on each of 20
prompts, one prompt at a time, backends alternating; medians of per-prompt tokens/s and how many greedy
texts equal hf's (goal: default >= 2x hf with every text equal). Prints JSON.

Examples:
    .venv/bin/python benchmarks/generate.py
    .venv/bin/python benchmarks/generate.py --model tiny-path --new-tokens 32 --repeats 1 --compare-prompts 2
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
# part 2: the first answers in one word, the others in paragraphs
COMPARE_PROMPTS = [
    "What is the capital of France?",
    *PROMPTS,
    "What are the benefits of regular exercise?",
    "Explain photosynthesis to a ten-year-old.",
    "Write a poem about the sea.",
    "How do vaccines work?",
    "Give me three ideas for a birthday party.",
    "What is machine learning?",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "How do I make a good cup of coffee?",
    "Explain the difference between weather and climate.",
    "What should I pack for a weekend hiking trip?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare-prompts", type=int, default=20, help="part 2 prompts (0: skip part 2)")
    ap.add_argument("--compare-new-tokens", type=int, default=96)
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
    if args.compare_prompts > 0:
        results["default_vs_hf"] = default_vs_hf(args, resolved, loaded)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


def default_vs_hf(args, resolved, loaded) -> dict:
    """Part 2: `auto` (its fp32 OpenVINO IR, converted once here) vs hf vs llamacpp, one prompt at a time."""
    import statistics

    from llmctl.config.profiles import resolve_config
    from llmctl.inference import backends
    from llmctl.inference.backends import openvino
    from llmctl.inference.generate import generate, pick_backend

    out: dict = {"prompts": args.compare_prompts, "new_tokens": args.compare_new_tokens, "conversion_seconds": None}
    if (
        backends.installed("openvino")
        and resolved.entry is not None
        and openvino.cached_conversion(resolved, 32) is None
    ):
        t0 = time.perf_counter()
        openvino.convert(resolved, openvino.FULL, lambda m: print(m, file=sys.stderr))
        out["conversion_seconds"] = round(time.perf_counter() - t0, 1)

    def config(backend: str) -> dict:
        explicit = {"max_new_tokens": args.compare_new_tokens, "device": "cpu", "backend": backend}
        return resolve_config("generate", explicit={**explicit, "do_sample": False})

    runs = {"default": config("auto"), "hf": config("hf")}
    out["default_backend"] = pick_backend(args.model, runs["default"], None)[1:]
    has_gguf = backends.installed("llamacpp") and backends._module("llamacpp").gguf_file_of(resolved)
    if has_gguf:
        runs["llamacpp"] = config("llamacpp")
    speeds: dict = {k: [] for k in runs}
    texts: dict = {k: [] for k in runs}
    for i, prompt in enumerate(COMPARE_PROMPTS[: args.compare_prompts]):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for name in order:
            item = [{"id": i, "prompt": prompt}]
            res = generate(args.model, item, runs[name], loaded=loaded if name == "hf" else None)
            speeds[name].append(res.stats["tokens_per_s"])
            texts[name].append(res.items[0]["output"])
    for name in runs:
        out[f"{name}_tokens_per_s"] = round(statistics.median(speeds[name]), 2)
    for name in runs:
        if name != "hf":
            same = [a == b for a, b in zip(texts[name], texts["hf"])]
            out[f"{name}_vs_hf"] = round(out[f"{name}_tokens_per_s"] / out["hf_tokens_per_s"], 2)
            out[f"{name}_same_greedy_texts"] = f"{sum(same)}/{len(same)}"
            out[f"{name}_differing_prompts"] = [i for i, s in enumerate(same) if not s]
    if has_gguf:
        out["default_vs_llamacpp"] = round(out["default_tokens_per_s"] / out["llamacpp_tokens_per_s"], 2)
    else:
        out["llamacpp"] = "not installed (pip install 'llmctl[llamacpp]' compiles llama.cpp)"
    out["goal"] = "default_vs_hf >= 2 with every greedy text equal to hf's"
    out["goal_met"] = out["default_vs_hf"] >= 2 and not out["default_differing_prompts"]
    return out


if __name__ == "__main__":
    main()
