"""The parity check: does the exported model, read by a reader other than its writer, behave like the source?

Three measures, all on token ids made by the source's tokenizer so that both models see the same input:
greedy continuations of a fixed prompt set compared token by token (exactly `max_new_tokens` each: EOS is
held back on both sides), max |Δlogit| over a few sequences (prompt + the source's continuation), and
perplexity on a held-out text (llmctl.evaluate.perplexity, non-overlapping windows). The reader's own tokenizer is
checked on the prompts too. The default held-out text (`check_text.txt`) is public-domain writing bundled with
llmctl: Lincoln's Gettysburg Address (1863), the opening of the US Declaration of Independence (1776) and the
first chapter's opening of Jane Austen's Pride and Prejudice (1813).

Examples:
    report = compare(source_model, source_tok, export_model, export_tok, text=default_text(), reader="transformers")
    report["greedy_token_agreement"], report["max_abs_logit_diff"], report["ppl_relative_increase"]
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import GateFailed

# The fixed prompt set (the first `check.prompts` are used; the benchmark uses all 20): plain text, no chat
# template, so every model and reader sees the same ids.
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "To make a cup of tea, first",
    "The three primary colors are",
    "def fibonacci(n):\n    ",
    "Water boils at a temperature of",
    "The quick brown fox",
    "In 1969, the first humans to walk on the Moon were",
    "A good way to learn a new language is to",
    "The largest planet in our solar system is",
    "Photosynthesis is the process by which plants",
    "My favourite book is",
    "The recipe calls for two cups of flour,",
    "import numpy as np\nx = np.",
    "The meeting has been moved to Thursday because",
    "Shakespeare wrote many plays, including",
    "The sum of 12 and 30 is",
    "Dear team, thank you all for",
    "The best way to stay healthy is",
    "Question: What is the boiling point of water?\nAnswer:",
)
CHECK_TEXT = Path(__file__).with_name("check_text.txt")


def default_text() -> str:
    """The held-out text bundled with llmctl (about 5 KB)."""
    return CHECK_TEXT.read_text(encoding="utf-8")


def _greedy(model, ids, n: int, pad_id: int, eos_id) -> list[int]:
    """Exactly n greedy tokens after ids (EOS suppressed until then, on every reader alike)."""
    import torch
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=pad_id, eos_token_id=eos_id, num_beams=1
    )
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    return out[0, ids.shape[1] :].tolist()


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()


def compare(
    source,
    source_tok,
    export,
    export_tok,
    *,
    text: str,
    reader: str,
    prompts: int = 8,
    max_new_tokens: int = 16,
    logit_sequences: int = 4,
    seqlen: int = 512,
    progress=None,
) -> dict:
    """Compare an exported model (as `reader` loaded it) with its source; return the parity report.

    Examples:
        compare(src, tok, back, back_tok, text=default_text(), reader="transformers GGUF loader")["greedy_identical"]
    """
    import torch

    from llmctl.evaluate.perplexity import perplexity

    say = progress or (lambda _m: None)
    pad = source_tok.pad_token_id if source_tok.pad_token_id is not None else source_tok.eos_token_id
    eos = source_tok.eos_token_id
    chosen = PROMPTS[:prompts]
    agree = total = identical = tokenizer_agrees = 0
    max_diff = max_logit = 0.0
    for i, prompt in enumerate(chosen):
        say(f"greedy prompt {i + 1}/{len(chosen)}")
        ids = torch.tensor([source_tok(prompt)["input_ids"]])
        a = _greedy(source, ids, max_new_tokens, pad, eos)
        b = _greedy(export, ids, max_new_tokens, pad, eos)
        agree += sum(x == y for x, y in zip(a, b))
        total += len(a)
        identical += a == b
        mine = export_tok(prompt, add_special_tokens=False)["input_ids"] if export_tok is not None else None
        tokenizer_agrees += mine == source_tok(prompt, add_special_tokens=False)["input_ids"]
        if i < logit_sequences:
            seq = torch.cat([ids, torch.tensor([a])], dim=1)
            la, lb = _logits(source, seq), _logits(export, seq)
            max_diff = max(max_diff, float((la - lb).abs().max()))
            max_logit = max(max_logit, float(la.abs().max()))
    say("perplexity")
    ppl_source = perplexity(source, source_tok, text, seqlen=seqlen, stride=seqlen)["perplexity"]
    ppl_export = perplexity(export, source_tok, text, seqlen=seqlen, stride=seqlen)["perplexity"]
    return {
        "reader": reader,
        "prompts": len(chosen),
        "new_tokens": max_new_tokens,
        "greedy_identical": identical,
        "greedy_token_agreement": round(agree / total, 4),
        "tokenizer_agrees": tokenizer_agrees,
        "max_abs_logit_diff": max_diff,
        "max_rel_logit_diff": max_diff / max_logit if max_logit else 0.0,
        "perplexity_source": round(ppl_source, 4),
        "perplexity_export": round(ppl_export, 4),
        "ppl_relative_increase": round(ppl_export / ppl_source - 1, 5),
    }


def gate(reports: list[dict], max_increase: float, what: str) -> None:
    """Raise GateFailed when any reader's perplexity rose by more than max_increase (relative)."""
    for r in reports:
        if r["ppl_relative_increase"] > max_increase:
            raise GateFailed(
                f"{what}: perplexity {r['perplexity_source']:.4g} → {r['perplexity_export']:.4g} "
                f"({r['ppl_relative_increase']:+.2%}, {r['reader']}) is above --max-ppl-increase "
                f"{max_increase:.2%}",
                hint="export a higher-precision type, or raise --max-ppl-increase",
            )


def metrics(reports: list[dict]) -> dict:
    """The registry metrics of a check: the first (transformers) reader's numbers."""
    r = reports[0]
    return {
        "parity.greedy_token_agreement": r["greedy_token_agreement"],
        "parity.max_abs_logit_diff": r["max_abs_logit_diff"],
        "parity.ppl_relative_increase": r["ppl_relative_increase"],
        "parity.perplexity": r["perplexity_export"],
    }
