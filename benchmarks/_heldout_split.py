"""Shared by the compression benchmarks: split a text into scored (held-out) and calibration files.

The first `eval_tokens` tokens are scored; calibration windows are drawn from the rest, so the two
never overlap. Returns the `--set` entries that point llmctl's quantize/prune configs at both files.

Examples:
    sets = heldout_sets("smollm2-135m-instruct", "wiki.test.raw", 16384, 512, 32, 512, "qbench-")
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def heldout_sets(
    model: str, data: str, eval_tokens: int, seqlen: int, calib_samples: int, calib_seqlen: int, prefix: str
) -> list[str]:
    from llmctl.compress.calibration import encode
    from llmctl.evaluate.perplexity import read_text
    from llmctl.models.loading import load_tokenizer
    from llmctl.models.resolve import resolve_model

    tok = load_tokenizer(resolve_model(model).path)
    ids = encode(tok, read_text(Path(data)))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    eval_file, calib_file = work / "eval.txt", work / "calib.txt"
    eval_file.write_text(tok.decode(ids[:eval_tokens]), encoding="utf-8")
    calib_file.write_text(tok.decode(ids[eval_tokens:]), encoding="utf-8")
    return [
        f"calib.data={calib_file}",
        f"calib.samples={calib_samples}",
        f"calib.seqlen={calib_seqlen}",
        f"eval.data={eval_file}",
        f"eval.tokens={eval_tokens}",
        f"eval.seqlen={seqlen}",
    ]
