"""Export benchmark: per GGUF type, size, export seconds, greedy agreement and WikiText-2 perplexity vs the source;
compressed-tensors of a GPTQ entry vs llmctl's own load of it.

Everything goes through `llmctl export`'s service (write → put in place) in a throwaway LLMCTL_HOME (or the one
given, e.g. the demo's, to bench its merged LoRA model `smol-alpaca`); then each exported file is read back by
transformers' GGUF loader and compared with llmctl's load of the source on the same 20 prompts (greedy, token by
token) and the same WikiText-2 windows (the first --eval-tokens tokens of wiki.test.raw, windows of --seqlen, no
overlap). When llama-cpp-python is installed its tokens/s on each file is measured next to llmctl's `generate`
on the source (same prompt, --new-tokens greedy tokens); otherwise that column says "not installed".
Goals (issue 13): f16/bf16 token-identical on all 20 prompts; q8_0 perplexity within 1 % of the source; the
compressed-tensors export of a GPTQ entry gives llmctl's logits (<= 1e-3); the default model exports in <= 30 s.

Usage:
    python benchmarks/export.py                                      # default model, every type (slow on CPU)
    python benchmarks/export.py --types q8_0 --prompts 3 --eval-tokens 1024 --gptq-calib 2 --ct-algo rtn   # quick
    LLMCTL_HOME=demo-out/home python benchmarks/export.py --models smollm2-135m-instruct,smol-alpaca
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def _wiki_text(tokenizer, path: Path, tokens: int) -> str:
    from llmctl.evaluate.perplexity import read_text

    ids = tokenizer(read_text(path), add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def _llama_cpp_speed(path: Path, prompt: str, new_tokens: int) -> float | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "not installed"
    llm = Llama(model_path=str(path), n_ctx=512, verbose=False)
    start = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=new_tokens, temperature=0.0)
    return round(out["usage"]["completion_tokens"] / (time.perf_counter() - start), 2)


def _llmctl_speed(model: str, prompt: str, new_tokens: int) -> float:
    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import generate

    cfg = resolve_config("generate", None, [f"max_new_tokens={new_tokens}", "do_sample=false", "chat=false"], {})
    return generate(model, [{"id": 1, "prompt": prompt}], cfg).stats["tokens_per_s"]


def bench_types(model: str, args, tmp: Path) -> list[dict]:
    from llmctl.config.profiles import resolve_config
    from llmctl.export import parity
    from llmctl.export.service import export
    from llmctl.models.formats.gguf import read
    from llmctl.models.loading import load_model

    source = load_model(model, dtype="float32", device="cpu")
    text = _wiki_text(source.tokenizer, Path(args.data), args.eval_tokens)
    speed_prompt = parity.PROMPTS[0]
    rows = []
    for qtype in args.types.split(","):
        cfg = resolve_config("export", None, [f"type={qtype}", "check.enabled=false"], {})
        started = time.perf_counter()
        out = export(model, cfg, output=str(tmp / f"{Path(model).name}.{qtype}.gguf"), force=True)
        seconds = round(time.perf_counter() - started, 2)
        back, back_tok = read(Path(out["path"]))
        report = parity.compare(
            source.model,
            source.tokenizer,
            back,
            back_tok,
            text=text,
            reader="transformers",
            prompts=args.prompts,
            max_new_tokens=args.new_tokens,
            seqlen=args.seqlen,
        )
        del back
        row = {
            "model": model,
            "type": qtype,
            "mib": round(out["size_bytes"] / 2**20, 1),
            "export_seconds": seconds,
            "writer_seconds": out.get("writer_seconds"),
            "greedy_identical": report["greedy_identical"],
            "prompts": report["prompts"],
            "token_agreement": report["greedy_token_agreement"],
            "max_abs_logit_diff": round(report["max_abs_logit_diff"], 5),
            "wikitext_ppl_source": report["perplexity_source"],
            "wikitext_ppl_export": report["perplexity_export"],
            "ppl_relative_increase": report["ppl_relative_increase"],
            "llama_cpp_tok_s": _llama_cpp_speed(Path(out["path"]), speed_prompt, args.speed_tokens),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        Path(out["path"]).unlink()
    if any(isinstance(r["llama_cpp_tok_s"], float) for r in rows):
        rows.append({"model": model, "llmctl_generate_tok_s": _llmctl_speed(model, speed_prompt, args.speed_tokens)})
    return rows


def bench_gptq_compressed_tensors(model: str, args, tmp: Path) -> dict:
    """quantize 4-bit (GPTQ, INC layout) → export compressed-tensors → transformers' loader vs llmctl's load."""
    import torch

    from llmctl.config.profiles import resolve_config
    from llmctl.export.service import export
    from llmctl.models.formats.compressed_tensors import read_transformers
    from llmctl.models.loading import load_model
    from llmctl.quantize import quantize

    sets = [
        f"algo={args.ct_algo}",
        f"calib.samples={args.gptq_calib}",
        "calib.seqlen=256",
        f"calib.data={args.data}",
        "eval.tokens=0",
        "save_format=inc",
    ]
    qcfg = resolve_config("quantize", None, sets, {})
    started = time.perf_counter()
    quantize(model, "bench-gptq4", qcfg, force=True)
    quantize_seconds = round(time.perf_counter() - started, 1)
    cfg = resolve_config("export", None, ["format=compressed-tensors", "check.enabled=false"], {})
    out = export("bench-gptq4", cfg, output=str(tmp / "bench-gptq4-ct"), force=True)
    ours = load_model("bench-gptq4", dtype="float32", device="cpu")
    theirs = read_transformers(out["path"], torch.float32)
    ids = ours.tokenizer(_wiki_text(ours.tokenizer, Path(args.data), 512), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        diff = float((ours.model(ids).logits - theirs(ids).logits).abs().max())
    return {
        "model": model,
        "algo": args.ct_algo,
        "quantize_seconds": quantize_seconds,
        "ct_mib": round(out["size_bytes"] / 2**20, 1),
        "ct_layout_group_size": out["layout_group_size"],
        "ct_actorder": out["actorder"],
        "max_abs_logit_diff_vs_llmctl": diff,
        "goal_met": diff <= 1e-3,
    }


def main() -> None:
    from llmctl.export.targets import GGUF_TYPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m-instruct", help="comma list of registry names")
    ap.add_argument("--types", default=",".join(GGUF_TYPES))
    ap.add_argument("--data", default=str(WIKI))
    ap.add_argument("--eval-tokens", type=int, default=12288)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt compared")
    ap.add_argument("--speed-tokens", type=int, default=128, help="tokens generated for the tokens/s columns")
    ap.add_argument("--gptq-calib", type=int, default=32, help="GPTQ calibration windows of 256 tokens (0 = skip)")
    ap.add_argument(
        "--ct-algo",
        default="gptq",
        choices=["gptq", "rtn"],
        help="algorithm of the entry exported to compressed-tensors (rtn: quick smoke runs)",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    os.environ.setdefault("LLMCTL_HOME", tempfile.mkdtemp(prefix="llmctl-bench-"))
    import torch

    torch.set_num_threads(args.threads)
    result = {"settings": vars(args), "cpu": _cpu(), "types": [], "gptq_compressed_tensors": None}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        for model in args.models.split(","):
            result["types"] += bench_types(model, args, Path(tmp))
        if args.gptq_calib:
            result["gptq_compressed_tensors"] = bench_gptq_compressed_tensors(
                args.models.split(",")[0], args, Path(tmp)
            )
    print(json.dumps(result, indent=2))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
