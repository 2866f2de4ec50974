"""Finetuning speed: the seed course's recipe (HF Trainer + peft LoRA, no packing) vs `llmctl finetune`.

Both sides train a LoRA adapter (r=16, alpha=32, dropout=0.05, peft's default target modules for the
architecture: q_proj, v_proj on LLaMA) on the same Alpaca examples, formatted with the model's chat
template and cut at the same max length. Each side runs in its own subprocess so its peak RSS (and peak
GPU memory on CUDA) is its own. tokens/s counts only non-padding tokens fed to the model, over the timed
training loop (model loading and tokenization excluded on both sides). Because shared machines are noisy,
tokens per CPU-second of the training loop (process CPU time, all threads) is reported beside wall-clock
tokens/s.

`--processes 1,2` measures `llmctl finetune` alone under torchrun instead: the same global batch (grad-accum x
processes fixed) with 1 and with 2 processes (gloo on CPU: each process gets cores / processes threads; NCCL on
GPUs), tokens/s of each and their ratio.

Usage:
    .venv/bin/python benchmarks/finetune_speed.py                      # defaults below
    .venv/bin/python benchmarks/finetune_speed.py --examples 128 --steps 6 --max-len 256   # quick
    .venv/bin/python benchmarks/finetune_speed.py --processes 1,2 --steps 20                # torchrun scaling
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_2000.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_path(spec: str) -> str:
    from llmctl.models.resolve import resolve_model

    return resolve_model(spec).path


def hf_side(args) -> dict:
    """The course recipe: Trainer, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05), padded batches."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(args.seed)
    path = model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    records = json.loads(Path(args.data).read_text())[: args.examples]

    def fmt(r):
        user = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        return tok.apply_chat_template(msgs, tokenize=False)

    ds = Dataset.from_list([{"text": fmt(r)} for r in records])
    ds = ds.map(
        lambda b: tok(b["text"], truncation=True, max_length=args.max_len), batched=True, remove_columns=["text"]
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM"))
    base_collator = DataCollatorForLanguageModeling(tok, mlm=False)
    counted = {"tokens": 0}

    def collator(features):
        batch = base_collator(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["t0"], timing["c0"] = time.time(), time.process_time()

        def on_train_end(self, *a, **k):
            timing["t1"], timing["c1"] = time.time(), time.process_time()

    out = tempfile.mkdtemp(prefix="hf-trainer-")
    targs = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=2e-4,
        logging_steps=max(1, args.steps // 4),
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    seconds, cpu = timing["t1"] - timing["t0"], timing["c1"] - timing["c0"]
    return {
        "side": "hf_trainer",
        "steps": args.steps,
        "tokens": counted["tokens"],
        "seconds": round(seconds, 2),
        "tokens_per_s": round(counted["tokens"] / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_cpu_s": round(counted["tokens"] / cpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **_gpu_peak(),
    }


def llmctl_side(args) -> dict:
    from llmctl.config.profiles import resolve_config
    from llmctl.finetune import finetune
    from llmctl.training.precision import compute_dtype

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps(json.loads(Path(args.data).read_text())[: args.examples]))
        config = resolve_config(
            "finetune",
            "lora",
            [
                "lora.r=16",
                "lora.alpha=32",
                "lora.dropout=0.05",
                "lora.target_modules=q_proj,v_proj",
                "data.eval_split=0",
                "train.save_every=0",
            ],
            {
                "train.max_steps": args.steps,
                "train.batch_size": args.llmctl_batch_size,
                "train.grad_accum": args.llmctl_grad_accum,
                "train.seq_len": args.max_len,
                "train.seed": args.seed,
                "train.dtype": args.llmctl_dtype,
            },
        )
        os.environ["LLMCTL_HOME"] = str(Path(tmp) / "home")
        # the default model from the caller's registry, linked (not converted again)
        from llmctl.models.importer import import_model
        from llmctl.models.registry import Registry

        import_model(Registry(), args.model_dir, "base", link=True)
        res = finetune("base", data, "bench-lora", config)
    m = res.metrics
    return {
        "side": "llmctl",
        "steps": args.steps,
        "tokens": m["tokens_trained"],
        "seconds": m["train_seconds"],
        "tokens_per_s": m["tokens_per_s"],
        "cpu_seconds": m["train_cpu_seconds"],
        "tokens_per_cpu_s": round(m["tokens_trained"] / m["train_cpu_seconds"], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "compute_dtype": compute_dtype(args.llmctl_dtype, "cpu"),
        **_gpu_peak(),
    }


def _gpu_peak() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {}


def processes_side(args) -> dict:
    """`llmctl finetune` under torchrun with 1 and with N processes, the same global batch; tokens/s of each."""
    counts = [int(x) for x in args.processes.split(",")]
    global_accum = args.llmctl_grad_accum * max(counts)
    llmctl = str(Path(sys.executable).parent / "llmctl")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps(json.loads(Path(args.data).read_text())[: args.examples]))
        for n in counts:
            home = Path(tmp) / f"home{n}"
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(n),
                llmctl,
                "finetune",
                "--model",
                args.model_dir,
                "--data",
                str(data),
                "--name",
                "speed",
                "--json",
                "--max-steps",
                str(args.steps),
                "--batch-size",
                str(args.llmctl_batch_size),
                "--grad-accum",
                str(global_accum // n),
                "--seq-len",
                str(args.max_len),
                "--seed",
                str(args.seed),
                "--dtype",
                args.llmctl_dtype,
                "--set",
                "lora.target_modules=q_proj,v_proj",
                "--set",
                "data.eval_split=0",
                "--save-every",
                "0",
                "--eval-every",
                "0",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LLMCTL_HOME": str(home)})
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{n} process(es) failed (exit {proc.returncode})")
            m = json.loads(proc.stdout)["metrics"]
            runs[n] = {
                "processes": n,
                "grad_accum": global_accum // n,
                "tokens": m["tokens_trained"],
                "seconds": m["train_seconds"],
                "tokens_per_s": m["tokens_per_s"],
                "final_loss": m["train_loss"],
            }
            sys.stderr.write(f"{n} process(es): {runs[n]}\n")
    lo, hi = runs[min(counts)], runs[max(counts)]
    return {
        "benchmark": "finetune_speed_processes",
        "model": args.model,
        "steps": args.steps,
        "global_batch": f"{args.llmctl_batch_size} x {global_accum} packed rows of {args.max_len}",
        "runs": list(runs.values()),
        "tokens_per_s_ratio": round(hi["tokens_per_s"] / lo["tokens_per_s"], 3),
        "same_final_loss": abs(hi["final_loss"] - lo["final_loss"]) < 1e-3,
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8, help="HF Trainer sequences per step")
    ap.add_argument("--llmctl-batch-size", type=int, default=4, help="llmctl packed rows per micro-batch")
    ap.add_argument("--llmctl-grad-accum", type=int, default=2)
    ap.add_argument("--llmctl-dtype", default="auto")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--processes", default=None, help="e.g. 1,2: llmctl under torchrun with these process counts")
    ap.add_argument("--side", choices=["hf", "llmctl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        result = hf_side(args) if args.side == "hf" else llmctl_side(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    args.model_dir = model_path(args.model)
    if args.processes:
        print(json.dumps(processes_side(args), indent=2))
        return
    sides = {}
    for side in ("hf", "llmctl"):
        cmd = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--model",
            args.model_dir,
            "--model-dir",
            args.model_dir,
            "--data",
            args.data,
            "--examples",
            str(args.examples),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--llmctl-batch-size",
            str(args.llmctl_batch_size),
            "--llmctl-grad-accum",
            str(args.llmctl_grad_accum),
            "--llmctl-dtype",
            args.llmctl_dtype,
            "--max-len",
            str(args.max_len),
            "--seed",
            str(args.seed),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{side} side failed (exit {proc.returncode})")
        sides[side] = json.loads(lines[-1][7:])
        sys.stderr.write(f"{side}: {sides[side]}\n")
    hf, ll = sides["hf"], sides["llmctl"]
    report = {
        "benchmark": "finetune_speed",
        "model": args.model,
        "examples": args.examples,
        "steps": args.steps,
        "max_len": args.max_len,
        "hf_trainer": hf,
        "llmctl": ll,
        "tokens_per_s_ratio": round(ll["tokens_per_s"] / hf["tokens_per_s"], 3),
        "tokens_per_cpu_s_ratio": round(ll["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"], 3),
        "peak_rss_ratio": round(ll["peak_rss_mb"] / hf["peak_rss_mb"], 3),
        "goal": {"tokens_per_s_ratio": ">= 1.5", "peak_rss_ratio": "<= 0.8"},
    }
    if "peak_gpu_mb" in hf and "peak_gpu_mb" in ll:
        report["peak_gpu_ratio"] = round(ll["peak_gpu_mb"] / hf["peak_gpu_mb"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
