"""`llmctl tokenize`: train tokenizers, encode corpora into token shards for pretraining, stats, show.

Examples:
    llmctl tokenize train --input tinyshakespeare/input.txt --type bpe --vocab-size 4096 --name shakespeare-bpe
    llmctl tokenize encode --tokenizer shakespeare-bpe --input input.txt --output data/shakespeare
    llmctl tokenize stats --tokenizer shakespeare-bpe --input input.txt
    llmctl tokenize show --tokenizer shakespeare-bpe "To be, or not to be"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmctl.cli._common import (
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    NameOpt,
    ProfileOpt,
    SeedOpt,
    SetOpt,
    command_line,
    emit_json,
    err,
    out,
    resolve,
    schema_options,
)

app = typer.Typer(
    help="Train tokenizers, encode corpora into token shards, inspect tokenization.", no_args_is_help=True
)

InputOpt = Annotated[
    list[Path] | None,
    typer.Option("--input", "-i", help="Input file: .txt, .jsonl, .json or .parquet (repeatable)."),
]
TokenizerOpt = Annotated[
    str, typer.Option("--tokenizer", "-t", help="Tokenizer or model name, tokenizer folder, or data dir.")
]
DocSplitOpt = Annotated[str | None, typer.Option("--doc-split")]
TextFieldOpt = Annotated[str | None, typer.Option("--text-field")]


def _inputs(inputs: list[Path] | None, extra: list[Path] | None = None) -> list[Path]:
    from llmctl.errors import UsageError

    files = [*(inputs or []), *(extra or [])]
    if not files:
        raise UsageError("no input files", hint="pass --input FILE (repeatable)")
    return files


# Options → profile keys, per subcommand: every value given is checked by llmctl/schemas/tokenize.py.
INPUT_OPTIONS = {"doc_split": "input.doc_split", "text_field": "input.text_field"}
TRAIN_OPTIONS = {
    "type_": "train.type",
    "vocab_size": "train.vocab_size",
    "min_frequency": "train.min_frequency",
    "bos_token": "train.bos_token",
    "eos_token": "train.eos_token",
    "pad_token": "train.pad_token",
    "unk_token": "train.unk_token",
    "special": "train.extra_special_tokens",
    **INPUT_OPTIONS,
}
ENCODE_OPTIONS = {
    "val_fraction": "encode.val_fraction",
    "seed": "encode.seed",
    "workers": "encode.workers",
    "quality": "curation.quality.enabled",
    "pii": "curation.pii.enabled",
    "dedup": "curation.exact_dedup.enabled",
    "near_dedup": "curation.near_dedup.enabled",
    "decontaminate": "curation.decontaminate.files",
    **INPUT_OPTIONS,
}
STATS_OPTIONS = {"top_k": "stats.top_k", **INPUT_OPTIONS}


@app.command("train")
@schema_options("tokenize", TRAIN_OPTIONS)
def train(
    ctx: typer.Context,
    input_files: InputOpt = None,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    vocab_size: Annotated[int | None, typer.Option("--vocab-size")] = None,
    min_frequency: Annotated[int | None, typer.Option("--min-frequency")] = None,
    bos_token: Annotated[str | None, typer.Option("--bos-token", help="BOS token ('' = none)")] = None,
    eos_token: Annotated[
        str | None, typer.Option("--eos-token", help="EOS token, the document separator ('' = none)")
    ] = None,
    pad_token: Annotated[str | None, typer.Option("--pad-token", help="PAD token ('' = none)")] = None,
    unk_token: Annotated[
        str | None, typer.Option("--unk-token", help="UNK token ('' = none; wordpiece/unigram need one)")
    ] = None,
    special: Annotated[list[str] | None, typer.Option("--special", help="Extra special token (repeatable)")] = None,
    doc_split: DocSplitOpt = None,
    text_field: TextFieldOpt = None,
    name: NameOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Save to this folder (registered in place with --name).")
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a byte-level BPE, WordPiece or Unigram tokenizer and save it as an HF tokenizer.

    Examples:
        llmctl tokenize train --input tinyshakespeare/input.txt --type bpe --vocab-size 4096 --name shakespeare-bpe
        llmctl tokenize train -i corpus.jsonl --text-field content --type unigram --vocab-size 8000 --name my-uni
        llmctl tokenize train -i a.txt --type wordpiece --vocab-size 2000 --output ./tok --special "<|im_start|>"
    """
    from llmctl.tokenize import train_tokenizer

    config = resolve(ctx, "tokenize", TRAIN_OPTIONS)
    files = _inputs(input_files)
    with err.status(f"Training a {config['train']['type']} tokenizer …"):
        result = train_tokenizer(files, config, name=name, output=output, force=force, command=command_line())
    if json_out:
        emit_json(result.json())
        return
    where = f"registered as {result.name!r} at {result.path}" if result.name else f"saved to {result.path}"
    err.print(
        f"Trained {result.type} tokenizer: vocab {result.vocab_size:,} on {result.docs:,} documents "
        f"({result.bytes / 1e6:.2f} MB) in {result.seconds:.1f} s; {where}"
    )
    if result.vocab_size < result.requested_vocab_size:
        err.print(
            f"[yellow]Note: asked for {result.requested_vocab_size:,} tokens; the data only supported "
            f"{result.vocab_size:,}.[/yellow]"
        )


@app.command("encode")
@schema_options("tokenize", ENCODE_OPTIONS)
def encode(
    ctx: typer.Context,
    tokenizer: TokenizerOpt,
    input_files: InputOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Data dir to create (index.json + shards).")
    ] = None,
    name: NameOpt = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction")] = None,
    seed: SeedOpt = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    doc_split: DocSplitOpt = None,
    text_field: TextFieldOpt = None,
    quality: Annotated[
        bool | None, typer.Option("--quality/--no-quality", help="Heuristic quality filters (curation.quality)")
    ] = None,
    pii: Annotated[bool | None, typer.Option("--pii/--no-pii", help="Redact emails, phone numbers and IPs")] = None,
    dedup: Annotated[bool | None, typer.Option("--dedup/--no-dedup", help="Drop exact duplicate documents")] = None,
    near_dedup: Annotated[
        bool | None, typer.Option("--near-dedup/--no-near-dedup", help="Drop near duplicates (MinHash LSH)")
    ] = None,
    decontaminate: Annotated[
        list[Path] | None,
        typer.Option("--decontaminate", help="Eval file; drop docs sharing a long n-gram with it (repeatable)"),
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Encode documents into EOS-separated token shards (train/val) for `llmctl pretrain`.

    Examples:
        llmctl tokenize encode --tokenizer shakespeare-bpe --input input.txt --output data/shakespeare
        llmctl tokenize encode -t shakespeare-bpe -i a.jsonl -i b.parquet --name my-data --val-fraction 0.05
        llmctl tokenize encode -t T -i web.jsonl -o data/web --dedup --near-dedup --quality --pii \\
            --decontaminate ../shared/data/hellaswag/hellaswag_val_1000.jsonl --json
    """
    from llmctl.errors import UsageError
    from llmctl.tokenize import encode_corpus

    config = resolve(ctx, "tokenize", ENCODE_OPTIONS)
    files = _inputs(input_files)
    if output is None and name is None:
        raise UsageError("say where the data goes", hint="pass --output DIR and/or --name NAME")

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn("[bold]encoding"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.description}"),  # the encoder's message: "N docs"
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=json_out,
    )
    task = progress.add_task("0 docs", total=None)

    def on_progress(message: str, done: int | None = None, total: int | None = None) -> None:
        # the bar starts with the first chunk, after every check: a refused run prints its error line only
        if not progress.live.is_started:
            progress.start()
        progress.update(task, description=message, completed=done, total=total)

    try:
        result = encode_corpus(
            tokenizer,
            files,
            config,
            output=output,
            name=name,
            force=force,
            command=command_line(),
            on_progress=on_progress,
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    if json_out:
        emit_json(result.json())
        return
    idx = result.index
    s = idx["stats"]
    splits = ", ".join(f"{k} {v['tokens']:,} tokens / {v['docs']:,} docs" for k, v in idx["splits"].items())
    where = f"{result.path}" + (f" (registered as {result.name!r})" if result.name else "")
    err.print(
        f"Encoded {s['docs_read']:,} documents ({s['bytes_read'] / 1e6:.2f} MB) in {s['seconds']:.1f} s "
        f"({s['mb_per_s']} MB/s, {s['workers']} workers) → {splits}; {idx['dtype']}; {s['bytes_per_token']} bytes/token"
    )
    for step in idx["curation"]["steps"]:
        extra = ""
        if step["step"] == "pii":
            extra = f", {step['docs_redacted']} docs redacted {step['redactions']}"
        elif step.get("reasons"):
            extra = f" {step['reasons']}"
        err.print(
            f"  curation {step['step']}: kept {step['kept']:,} of {step['in']:,}, dropped {step['dropped']:,}{extra}"
        )
    err.print(f"Wrote {where}")


@app.command("stats")
@schema_options("tokenize", STATS_OPTIONS)
def stats(
    ctx: typer.Context,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", "-t", help="Tokenizer or model name, or folder (data dirs: default their own)."),
    ] = None,
    input_files: Annotated[
        list[Path] | None,
        typer.Option("--input", "-i", help="Text file (.txt/.jsonl/.json/.parquet) or encoded data dir (repeatable)."),
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k")] = None,
    doc_split: DocSplitOpt = None,
    text_field: TextFieldOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Token statistics of files: tokens, bytes per token, unknown rate, top tokens, document lengths.

    Examples:
        llmctl tokenize stats --tokenizer shakespeare-bpe --input ../shared/data/tinyshakespeare/input.txt
        llmctl tokenize stats --input data/shakespeare          # an encoded data dir, with its own tokenizer
        llmctl tokenize stats -t smollm2-135m-instruct -i wikitext-2-raw/wiki.test.raw --doc-split line --json
    """
    from rich.table import Table

    from llmctl.tokenize import corpus_stats

    config = resolve(ctx, "tokenize", STATS_OPTIONS)
    files = _inputs(input_files)
    with err.status("Tokenizing …"):
        result = corpus_stats(tokenizer, files, config)
    if json_out:
        emit_json(result)
        return
    r = result
    summary = Table(show_header=False, title=f"{r['tokenizer']} (vocab {r['vocab_size']:,})")
    for label, value in [
        ("documents", f"{r['docs']:,}"),
        ("tokens", f"{r['tokens']:,}"),
        ("bytes", f"{r['bytes']:,}" if r["bytes"] is not None else "n/a"),
        ("bytes / token", r["bytes_per_token"]),
        ("tokens / word", r["tokens_per_word"]),
        ("unknown-token rate", f"{r['unk_rate']:.4%}" if r["unk_id"] is not None else "n/a (no unk token)"),
        ("vocab used", f"{r['vocab_used']:,} ({r['vocab_used_fraction']:.1%})"),
        (
            "doc tokens mean / median / max",
            f"{r['doc_tokens']['mean']} / {r['doc_tokens']['median']} / {r['doc_tokens']['max']}",
        ),
    ]:
        summary.add_row(label, str(value))
    out.print(summary)
    if r["top_tokens"]:
        top = Table("id", "token", "text", "count", "share", title="top tokens")
        for t in r["top_tokens"]:
            top.add_row(str(t["id"]), t["piece"], repr(t["text"]), f"{t['count']:,}", f"{t['share']:.2%}")
        out.print(top)
    hist = Table("doc tokens", "docs", "", title="document length histogram")
    peak = max((h["docs"] for h in r["doc_tokens"]["histogram"]), default=1)
    for h in r["doc_tokens"]["histogram"]:
        span = f"{h['min']}" if h["min"] == h["max"] else f"{h['min']}–{h['max']}"
        hist.add_row(span, f"{h['docs']:,}", "█" * max(1, round(30 * h["docs"] / peak)))
    out.print(hist)


_COLOURS = ["on dark_blue", "on dark_green", "on dark_red", "on purple4", "on dark_cyan", "on orange4"]


@app.command("show")
def show(
    tokenizer: TokenizerOpt,
    text: Annotated[str | None, typer.Argument(help="Text to tokenize (else read from stdin).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show how a tokenizer splits text: the pieces, coloured, with their ids.

    Examples:
        llmctl tokenize show --tokenizer shakespeare-bpe "To be, or not to be"
        echo "Café déjà vu" | llmctl tokenize show -t smollm2-135m-instruct --json
    """
    from rich.text import Text

    from llmctl.tokenize import show_tokens

    if text is None:
        text = "" if sys.stdin.isatty() else sys.stdin.read().rstrip("\n")
    result = show_tokens(tokenizer, text)
    if json_out:
        emit_json(result)
        return
    line = Text()
    for i, piece in enumerate(result["pieces"]):
        style = "bold white on red" if piece["unknown"] else f"white {_COLOURS[i % len(_COLOURS)]}"
        shown = piece["text"] or piece["token"]
        line.append(shown.replace("\n", "↵\n"), style=style)
    out.print(line)
    out.print(Text(" ".join(str(i) for i in result["ids"]), style="dim"))
    table_line = "  ".join(f"{p['id']}:{p['token']}" for p in result["pieces"])
    out.print(Text(table_line, style="cyan"))
    err.print(
        f"{result['tokens']} tokens, {result['bytes']} bytes "
        f"({result['bytes'] / max(1, result['tokens']):.2f} bytes/token) with {result['tokenizer']}"
    )
