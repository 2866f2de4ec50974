"""Benchmark: seconds and file size of llmctl's GGUF export of a registry model, per GGUF type.

Times `write_gguf` alone (model already loaded, as the export service calls it): vocabulary, tensor mapping,
numpy quantization (gguf-py) and the write. Goal from issue 13: the default model in <= 30 s on 2 cores.

Examples:
    .venv/bin/python benchmarks/gguf_export_speed.py                       # default model, every type
    .venv/bin/python benchmarks/gguf_export_speed.py --types q8_0,q4_0 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    from llmctl.export.gguf_writer import GGUF_TYPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF folder")
    parser.add_argument("--types", default=",".join(GGUF_TYPES), help="comma-separated GGUF types")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmctl.export.gguf_writer import write_gguf
    from llmctl.models.default import ensure_default_model
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    torch.set_num_threads(args.threads)
    if args.model == "smollm2-135m-instruct":
        ensure_default_model(Registry())
    path = resolve_model(args.model).path
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(
        f"model {args.model}: loaded in {time.perf_counter() - t0:.1f} s; {platform.processor() or 'cpu'}, "
        f"{args.threads} threads"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        for qtype in args.types.split(","):
            facts = write_gguf(model, tokenizer, Path(tmp) / f"m.{qtype}.gguf", qtype)
            rows.append(
                {
                    "type": qtype,
                    "seconds": facts["seconds"],
                    "mib": round(facts["size"] / 2**20, 1),
                    "tensor_types": facts["tensor_types"],
                }
            )
            print(f"{qtype:>5}  {facts['seconds']:6.2f} s  {rows[-1]['mib']:7.1f} MiB  {facts['tensor_types']}")
            Path(facts["path"]).unlink()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
