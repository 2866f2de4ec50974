"""`llmctl tokenize train|encode|stats|show`, the curation steps, and the token data they write."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jsonl
from llmctl.errors import LlmctlError

_SENTENCES = [
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven.",
    "If music be the food of love, play on; give me excess of it.",
    "Some are born great, some achieve greatness, and some have greatness thrust upon them.",
]


def _paragraphs(n: int = 40) -> list[str]:
    return [
        f"{_SENTENCES[i % len(_SENTENCES)]}\n{_SENTENCES[(i * 3 + 1) % len(_SENTENCES)]} Number {i}." for i in range(n)
    ]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(_paragraphs()) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def config():
    from llmctl.config.profiles import resolve_config

    def make(**explicit):
        return resolve_config("tokenize", None, None, {k.replace("__", "."): v for k, v in explicit.items()})

    return make


@pytest.fixture
def tok(corpus, config) -> str:
    """A 300-token byte-level BPE registered as 'tok'."""
    from llmctl.tokenize import train_tokenizer

    train_tokenizer([corpus], config(train__vocab_size=300), name="tok")
    return "tok"


def _error(result) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


# ---- train ------------------------------------------------------------------------------------------


def test_train_bpe_registers_an_hf_tokenizer_that_round_trips(cli, corpus):
    from transformers import AutoTokenizer

    from llmctl.models.registry import Registry

    r = cli("tokenize", "train", "--input", corpus, "--type", "bpe", "--vocab-size", 300, "--name", "sh-bpe", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vocab_size"] == 300 and info["type"] == "bpe" and info["docs"] == 40
    entry = Registry().get("sh-bpe")
    assert entry.format == "tokenizer" and entry.meta["type"] == "bpe"
    assert (Path(entry.path) / "llmctl-config.yaml").is_file()
    hf = AutoTokenizer.from_pretrained(entry.path)
    text = "Café, naïve — déjà vu 😀 To be, or not to be."
    assert hf.decode(hf(text)["input_ids"]) == text
    assert hf.eos_token == "<|endoftext|>" and hf.pad_token == "<|pad|>" and hf.bos_token == "<|bos|>"
    assert len(hf) == 300


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_train_wordpiece_and_unigram(kind, corpus, config, tmp_path):
    from transformers import AutoTokenizer

    from llmctl.tokenize import train_tokenizer

    res = train_tokenizer([corpus], config(train__type=kind, train__vocab_size=200), output=tmp_path / kind)
    assert res.name is None and res.vocab_size <= 200
    hf = AutoTokenizer.from_pretrained(tmp_path / kind)
    ids = hf("the question of mercy")["input_ids"]
    assert hf.unk_token_id not in ids
    assert "question" in hf.decode(ids)


def test_train_reads_jsonl_text_field_and_parquet(tmp_path, config):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmctl.tokenize import train_tokenizer

    rows = [{"id": i, "content": p} for i, p in enumerate(_paragraphs(20))]
    jl = write_jsonl(tmp_path / "a.jsonl", rows)
    pqf = tmp_path / "b.parquet"
    pq.write_table(pa.table({"content": [r["content"] for r in rows]}), pqf)
    res = train_tokenizer([jl, pqf], config(train__vocab_size=280, input__text_field="content"), name="mix")
    assert res.docs == 40


def test_train_bad_inputs(cli, corpus, tmp_path):
    from llmctl.models.registry import Registry

    r = cli("tokenize", "train", "--input", corpus, "--vocab-size", 100, "--name", "x")
    assert r.exit_code == 1
    assert _error(r) == (
        "Error: --vocab-size 100 is below the byte alphabet of byte-level BPE "
        "(256 bytes + 4 special tokens = 260); use --vocab-size 260 or more"
    )
    r = cli("tokenize", "train", "--input", corpus, "--type", "sentencepiece", "--name", "x")
    assert (r.exit_code, _error(r)) == (2, "Error: --type sentencepiece: must be one of bpe, wordpiece, unigram")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = cli("tokenize", "train", "--input", empty, "--vocab-size", 300, "--name", "x")
    assert r.exit_code == 1 and _error(r) == f"Error: input {empty} is empty; give a file with text in it"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    r = cli("tokenize", "train", "--input", blank, "--vocab-size", 300, "--name", "x")
    assert r.exit_code == 1 and "has no documents" in _error(r)
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    r = cli("tokenize", "train", "--input", binary, "--vocab-size", 300, "--name", "x")
    assert r.exit_code == 1 and _error(r) == (
        f"Error: input {binary} looks binary (NUL byte at offset 0, line 1); "
        "give a UTF-8 text file (.txt, .jsonl or .json) or a .parquet file"
    )
    r = cli("tokenize", "train", "--input", tmp_path / "missing.txt", "--name", "x")
    assert r.exit_code == 1 and "does not exist" in _error(r)
    r = cli("tokenize", "train", "--vocab-size", 300, "--name", "x")
    assert r.exit_code == 2 and _error(r).startswith("Error: no input files")
    assert Registry().find("x") is None
    assert not any(p.name.startswith(".x.tmp") for p in Registry().models_root.iterdir())


def test_train_refuses_existing_name_without_force(cli, corpus, tok):
    r = cli("tokenize", "train", "--input", corpus, "--vocab-size", 300, "--name", tok)
    assert r.exit_code == 1 and "already exists in the registry" in _error(r)
    r = cli("tokenize", "train", "--input", corpus, "--vocab-size", 320, "--name", tok, "--force")
    assert r.exit_code == 0, r.stderr


# ---- encode -----------------------------------------------------------------------------------------


def _encode(cli, tok, corpus, out, *extra):
    r = cli("tokenize", "encode", "--tokenizer", tok, "--input", corpus, "--output", out, "--json", *extra)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_encode_writes_eos_separated_shards_with_a_document_split(cli, tok, corpus, tmp_path):
    from tokenizers import Tokenizer

    from llmctl.data.token_data import TokenData

    info = _encode(cli, tok, corpus, tmp_path / "data", "--val-fraction", 0.25, "--workers", 1)
    data = TokenData(tmp_path / "data")
    assert data.dtype == "uint16" and data.splits == ["train", "val"]
    assert info["stats"]["docs_read"] == 40 and info["stats"]["docs_kept"] == 40
    docs = {s: data.index["splits"][s]["docs"] for s in data.splits}
    assert docs["train"] + docs["val"] == 40 and docs["val"] > 0 and docs["train"] > docs["val"]
    eos = data.tokenizer["eos_id"]
    backend = Tokenizer.from_file(str(Path(data.tokenizer["path"]) / "tokenizer.json"))
    paragraphs = set(_paragraphs())
    for split in data.splits:
        toks = np.asarray(data.tokens(split))
        offsets = data.doc_offsets(split)
        assert len(offsets) == docs[split] and offsets[0] == 0
        assert (toks == eos).sum() == docs[split] and toks[-1] == eos
        ends = np.append(offsets[1:], len(toks))
        nbytes = 0
        for start, end in zip(offsets, ends):
            assert toks[end - 1] == eos
            text = backend.decode(toks[start : end - 1].tolist())
            assert text in paragraphs
            nbytes += len(text.encode("utf-8"))
        assert data.index["splits"][split]["bytes"] == nbytes  # pretrain's bits per byte uses it
    assert info["sources"][0]["sha256"] and info["tokenizer"]["name"] == tok
    assert (tmp_path / "data" / "llmctl-config.yaml").is_file()


def test_encode_is_deterministic_and_workers_agree(cli, tok, corpus, tmp_path):
    _encode(cli, tok, corpus, tmp_path / "a", "--workers", 1, "--seed", 7)
    _encode(cli, tok, corpus, tmp_path / "b", "--workers", 2, "--seed", 7, "--set", "encode.chunk_kb=1")
    _encode(cli, tok, corpus, tmp_path / "c", "--workers", 1, "--seed", 8)
    for f in ("train-00000.bin", "val-00000.bin", "train-docs.npy", "val-docs.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "val-docs.npy").read_bytes() != (tmp_path / "c" / "val-docs.npy").read_bytes()


def test_encode_small_shards_and_no_val(cli, tok, corpus, tmp_path, config):
    from llmctl.data.token_data import TokenData
    from llmctl.tokenize import encode_corpus

    cfg = config(encode__val_fraction=0.0, encode__workers=1)
    cfg["encode"]["shard_mtokens"] = 1
    res = encode_corpus(tok, [corpus], cfg, output=tmp_path / "d")
    assert list(res.index["splits"]) == ["train"]
    assert TokenData(tmp_path / "d").num_tokens("train") == res.index["stats"]["tokens"]


def test_encode_registers_data_by_name(cli, tok, corpus):
    from llmctl.data.token_data import TokenData
    from llmctl.models.registry import Registry

    r = cli("tokenize", "encode", "--tokenizer", tok, "--input", corpus, "--name", "sh-data")
    assert r.exit_code == 0, r.stderr
    entry = Registry().get("sh-data")
    assert entry.format == "data" and entry.parents == [tok]
    assert TokenData(entry.path).num_tokens("train") > 0
    # a data dir (or its name) also works as --tokenizer: its tokenizer
    r = cli("tokenize", "show", "--tokenizer", "sh-data", "to be", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["tokenizer"] == tok


def test_encode_with_a_models_tokenizer(cli, tiny_model, corpus, tmp_path):
    info = _encode(cli, tiny_model, corpus, tmp_path / "d", "--val-fraction", 0)
    assert info["tokenizer"]["name"] == "tiny" and info["tokenizer"]["vocab_size"] == 384


def test_encode_bad_inputs(cli, tok, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = cli("tokenize", "encode", "--tokenizer", tok, "--input", corpus, "--output", out)
    assert (
        r.exit_code == 1 and _error(r) == f"Error: output dir {out} already exists; pick another path or pass --force"
    )
    for bad in ("1.0", "-0.1", "1.5"):
        r = cli(
            "tokenize",
            "encode",
            "--tokenizer",
            tok,
            "--input",
            corpus,
            "--output",
            tmp_path / "v",
            "--val-fraction",
            bad,
        )
        assert (r.exit_code, _error(r)) == (2, f"Error: --val-fraction {bad}: must be at least 0 and less than 1")
    r = cli("tokenize", "encode", "--tokenizer", "nope", "--input", corpus, "--output", tmp_path / "n")
    assert r.exit_code == 1 and _error(r).startswith("Error: --tokenizer 'nope': no model named 'nope'")
    r = cli("tokenize", "encode", "--tokenizer", tok, "--input", corpus)
    assert r.exit_code == 2 and "--output DIR and/or --name" in _error(r)
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    r = cli("tokenize", "encode", "--tokenizer", tok, "--input", empty, "--output", tmp_path / "x")
    assert r.exit_code == 1 and "is empty" in _error(r)
    jl = write_jsonl(tmp_path / "rows.jsonl", [{"body": "hello"}])
    r = cli("tokenize", "encode", "--tokenizer", tok, "--input", jl, "--output", tmp_path / "x")
    assert r.exit_code == 1 and _error(r) == (
        f"Error: input {jl} line 1 has no field 'text' (fields: body); name the text field with --text-field"
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "v").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_disk_full_leaves_nothing(workers, cli, tok, corpus, tmp_path, monkeypatch):
    from llmctl.data import token_data

    calls = {"n": 0}
    real = token_data.ShardWriter.add_documents

    def full(self, flat, lengths):
        calls["n"] += 1
        if calls["n"] >= 3:  # some data already written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, flat, lengths)

    monkeypatch.setattr(token_data.ShardWriter, "add_documents", full)
    out = tmp_path / "full"
    r = cli(
        "tokenize",
        "encode",
        "--tokenizer",
        tok,
        "--input",
        corpus,
        "--output",
        out,
        "--workers",
        workers,
        "--set",
        "encode.chunk_kb=1",
    )
    assert r.exit_code == 1
    assert _error(r) == (
        f"Error: disk full while writing token shards for {out}; nothing was kept; "
        "free disk space or pass an --output on another disk"
    )
    assert calls["n"] == 3
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_encode_curation_steps_reported(cli, tok, tmp_path):
    base = _paragraphs(8)  # 8 distinct sentence pairs
    eval_rows = [
        {
            "ctx": "the brave little tailor sewed seven flies with one blow before breakfast on monday morning",
            "endings": ["short ending"],
        }
    ]
    evalf = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    docs = [
        *base,
        base[0],  # exact duplicate
        base[1].replace("\n", "  \n  "),  # duplicate up to whitespace
        base[2] + " Extra.",  # near duplicate
        "ok",  # too short
        "hello!!! world??? again;;; there...",  # symbols
        "Mail bob@example.com or call +1 415-555-0100 from 192.168.1.20 today please, said the clerk.",
        "As the story goes, the brave little tailor sewed seven flies with one blow before breakfast on Monday "
        "morning.",
    ]
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    info = _encode(
        cli,
        tok,
        src,
        tmp_path / "cur",
        "--quality",
        "--pii",
        "--dedup",
        "--near-dedup",
        "--decontaminate",
        evalf,
        "--val-fraction",
        0,
    )
    steps = {s["step"]: s for s in info["curation"]["steps"]}
    assert [s["step"] for s in info["curation"]["steps"]] == [
        "exact_dedup",
        "quality",
        "decontaminate",
        "pii",
        "near_dedup",
    ]
    assert steps["quality"] == {
        "step": "quality",
        "in": 13,
        "dropped": 2,
        "kept": 11,
        "reasons": {"too_many_symbols": 1, "too_short": 1},
    }
    assert (steps["decontaminate"]["in"], steps["decontaminate"]["dropped"]) == (11, 1)
    assert steps["pii"]["docs_redacted"] == 1 and steps["pii"]["redactions"] == {"email": 1, "ip": 1, "phone": 1}
    assert (steps["exact_dedup"]["in"], steps["exact_dedup"]["dropped"]) == (15, 2)
    assert (steps["near_dedup"]["in"], steps["near_dedup"]["dropped"], steps["near_dedup"]["kept"]) == (10, 1, 9)
    assert info["stats"]["docs_kept"] == 9
    index = json.loads((tmp_path / "cur" / "index.json").read_text())
    assert index["curation"] == info["curation"]


# ---- curation steps, directly -------------------------------------------------------------------------


def test_quality_filter_rules():
    from llmctl.data.curation import QualityFilter

    q = QualityFilter(
        min_chars=10, max_chars=200, min_words=3, min_alpha_ratio=0.5, max_symbol_ratio=0.3, max_dup_line_ratio=0.3
    )
    assert q.check("A perfectly ordinary sentence about the sea.") is None
    assert q.check("tiny") == "too_short"
    assert q.check("word " * 60) == "too_long"
    assert q.check("Hello-there-friend") == "too_few_words"
    assert q.check("1234 5678 9012 3456 7890") == "too_few_letters"
    assert q.check("ab!! cd?? ef;; gh::") == "too_many_symbols"
    assert q.check("buy now\nbuy now\nbuy now\nbuy now\nhello") == "repeated_lines"


def test_pii_redaction():
    from llmctl.data.curation import redact_pii

    text, counts = redact_pii(
        "Write to jane.doe@mail.example.org, ring (020) 7946-0018 or +44 20 7946 0958; "
        "server 10.0.0.255 and fe80:0:0:0:200:f8ff:fe21:67cf. Year 2024, 3.14159, v1.2.3."
    )
    assert text == ("Write to <EMAIL>, ring <PHONE> or <PHONE>; server <IP> and <IP>. Year 2024, 3.14159, v1.2.3.")
    assert counts == {"email": 1, "phone": 2, "ip": 2}
    assert redact_pii("mail a@b.io, ip 1.2.3.4", kinds=("email",)) == ("mail <EMAIL>, ip 1.2.3.4", {"email": 1})
    assert redact_pii("Act 3, scene 2: 1599-1601.") == ("Act 3, scene 2: 1599-1601.", {})


def test_decontaminator_reads_eval_jsonl_generically(shared_data):
    from llmctl.data.curation import Decontaminator

    path = shared_data / "hellaswag" / "hellaswag_val_1000.jsonl"
    d = Decontaminator.from_files([path], n=13)
    assert len(d) > 1000
    row = json.loads(path.read_text().splitlines()[0])
    long_text = max([row["ctx"], *row["endings"]], key=lambda s: len(s.split()))
    assert d.contaminated("Preamble here. " + long_text.upper() + " And more words after it.")
    assert not d.contaminated("First Citizen: Before we proceed any further, hear me speak. " * 3)


def test_decontaminator_bad_file(tmp_path):
    from llmctl.data.curation import Decontaminator

    with pytest.raises(LlmctlError, match="does not exist"):
        Decontaminator.from_files([tmp_path / "nope.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(LlmctlError) as exc:
        Decontaminator.from_files([bad])
    assert exc.value.one_line() == (
        f"decontamination file {bad} line 1 is not valid JSON (Expecting property name "
        "enclosed in double quotes at column 2); each line must be one JSON object, "
        'e.g. {"text": "…"}'
    )


def test_exact_and_near_dedup():
    from llmctl.data.curation import ExactDedup, NearDedup, doc_key, minhash_signature

    ex = ExactDedup()
    assert not ex.seen(doc_key("a  b\nc"))
    assert ex.seen(doc_key(" a b c "))
    assert not ex.seen(doc_key("a b d"))
    long = " ".join(f"w{i}" for i in range(200))
    near = NearDedup(threshold=0.8)
    assert not near.is_duplicate("1", minhash_signature(long))
    assert near.is_duplicate("2", minhash_signature(long.replace("w100 ", "x100 ")))
    assert not near.is_duplicate("3", minhash_signature(" ".join(f"v{i}" for i in range(200))))


# ---- stats and show -------------------------------------------------------------------------------------


def test_stats(cli, tok, corpus):
    r = cli("tokenize", "stats", "--tokenizer", tok, "--input", corpus, "--json", "--top-k", 5)
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["docs"] == 40 and s["tokens"] > 0 and s["unk_rate"] == 0.0
    assert s["bytes_per_token"] == pytest.approx(s["bytes"] / s["tokens"], rel=1e-3)
    assert len(s["top_tokens"]) == 5 and s["top_tokens"][0]["count"] >= s["top_tokens"][-1]["count"]
    assert sum(h["docs"] for h in s["doc_tokens"]["histogram"]) == 40
    r = cli("tokenize", "stats", "--tokenizer", tok, "--input", corpus)
    assert r.exit_code == 0 and "bytes / token" in r.stdout and "document length histogram" in r.stdout


def test_stats_unknown_rate_with_wordpiece(cli, corpus, config, tmp_path):
    from llmctl.tokenize import corpus_stats, train_tokenizer

    train_tokenizer([corpus], config(train__type="wordpiece", train__vocab_size=200), name="wp")
    odd = tmp_path / "odd.txt"
    odd.write_text("To be 漢字 or not to be.\n\nΩ mercy.\n", encoding="utf-8")
    s = corpus_stats("wp", [odd], config())
    assert s["unk_tokens"] == 2 and 0 < s["unk_rate"] < 1


def test_stats_bad_input(cli, tok, tmp_path):
    r = cli("tokenize", "stats", "--tokenizer", tok, "--input", tmp_path / "nope.txt")
    assert (
        r.exit_code == 1 and _error(r) == f"Error: input {tmp_path / 'nope.txt'} does not exist; check the --input path"
    )


def test_show(cli, tok):
    text = "To be, or not to be — déjà vu."
    r = cli("tokenize", "show", "--tokenizer", tok, text, "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["round_trip"] and s["tokens"] == len(s["ids"]) == len(s["pieces"])
    assert "".join(p["text"] for p in s["pieces"] if p["end"] > p["start"]).startswith("To be, or not to be")
    r = cli("tokenize", "show", "--tokenizer", tok, "To be")
    assert r.exit_code == 0 and " ".join(map(str, s["ids"][:2])) in r.stdout


def test_show_bad_input(cli, tok, tmp_path):
    r = cli("tokenize", "show", "--tokenizer", "missing-tok", "hi")
    assert r.exit_code == 1 and "no model named 'missing-tok'" in _error(r)
    r = cli("tokenize", "show", "--tokenizer", tok, "")
    assert r.exit_code == 1 and _error(r).startswith("Error: no text to tokenize")
    r = cli("tokenize", "show", "--tokenizer", str(tmp_path), "hi")
    assert r.exit_code == 1 and "is not a model" in _error(r)


def test_encode_doc_split_json_input_and_uint32(cli, tok, corpus, tmp_path, config, monkeypatch):
    import json as _json

    from llmctl.data import token_data
    from llmctl.data.token_data import TokenData
    from llmctl.tokenize import encode_corpus

    lines = [ln for ln in corpus.read_text().splitlines() if ln.strip()]
    res = encode_corpus(
        tok,
        [corpus],
        config(input__doc_split="line", encode__val_fraction=0.0, encode__workers=1),
        output=tmp_path / "lines",
    )
    assert res.index["stats"]["docs_read"] == len(lines) == 80
    whole = encode_corpus(
        tok,
        [corpus],
        config(input__doc_split="file", encode__val_fraction=0.0, encode__workers=1),
        output=tmp_path / "file",
    )
    assert whole.index["splits"]["train"]["docs"] == 1
    arr = tmp_path / "rows.json"
    arr.write_text(_json.dumps([{"t": p} for p in _paragraphs(5)]))
    monkeypatch.setattr(token_data, "dtype_for_vocab", lambda v: "uint32")
    res32 = encode_corpus(tok, [arr], config(input__text_field="t", encode__val_fraction=0.0), output=tmp_path / "j")
    data = TokenData(tmp_path / "j")
    assert data.dtype == "uint32" and res32.index["stats"]["docs_read"] == 5
    assert (tmp_path / "j" / "train-00000.bin").stat().st_size == 4 * data.num_tokens("train")
    assert int(np.asarray(data.tokens("train"))[-1]) == data.tokenizer["eos_id"]


def test_stats_of_an_encoded_data_dir_matches_the_text(cli, tok, corpus, tmp_path):
    _encode(cli, tok, corpus, tmp_path / "d", "--val-fraction", 0.2)
    r = cli("tokenize", "stats", "--input", tmp_path / "d", "--json")
    assert r.exit_code == 0, r.stderr
    from_data = json.loads(r.stdout)
    from_text = json.loads(cli("tokenize", "stats", "-t", tok, "--input", corpus, "--json").stdout)
    for key in ("docs", "tokens", "bytes", "bytes_per_token", "unk_tokens", "vocab_used"):
        assert from_data[key] == from_text[key], key
    assert from_data["top_tokens"] == from_text["top_tokens"]
    assert sorted(h["docs"] for h in from_data["doc_tokens"]["histogram"]) == sorted(
        h["docs"] for h in from_text["doc_tokens"]["histogram"]
    )
    r = cli("tokenize", "stats", "--input", corpus)
    assert r.exit_code == 2 and _error(r).startswith("Error: --tokenizer is required for text files")


def _reference_docs(raw: bytes, doc_split: str) -> list[str]:
    """The obvious line-by-line reading of a text file into documents, to check the block reader against."""
    lines = [ln.decode("utf-8").replace("\r\n", "\n") for ln in raw.splitlines(keepends=True)]  # CRLF or LF ends
    if doc_split == "line":
        docs = [ln.rstrip("\n") for ln in lines]
    elif doc_split == "file":
        docs = ["".join(lines).strip("\n")]
    else:
        docs, para = [], []
        for ln in lines:
            if ln.strip():
                para.append(ln)
            elif para:
                docs.append("".join(para).rstrip("\n"))
                para = []
        if para:
            docs.append("".join(para).rstrip("\n"))
    return [d for d in docs if d.strip()]


@pytest.mark.parametrize("doc_split", ["blank-line", "line", "file"])
@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_block_reader_matches_line_by_line_reading(tmp_path, doc_split, block):
    from llmctl.tokenize import DocReader

    raw = (
        "\n\n  First para, line one.\r\nline two  \r\n \t \r\n\nSecond — naïve café 😀\n"
        "   indented third\n\n\n\nFourth\n  \nFifth ends without newline   \n   "
    ).encode()
    f = tmp_path / "t.txt"
    f.write_bytes(raw)
    reader = DocReader([f], doc_split=doc_split, block_bytes=block)
    assert list(reader) == _reference_docs(raw, doc_split)
    assert reader.bytes_read == len(raw)


def test_block_reader_reports_bad_bytes(tmp_path):
    from llmctl.tokenize import DocReader

    f = tmp_path / "late.txt"
    f.write_bytes(b"fine text\n" * 10 + b"bad \xff byte\n")
    with pytest.raises(LlmctlError, match=r"is not UTF-8 text \(byte 0xff at offset 104, line 11\)"):
        list(DocReader([f], block_bytes=16))
    f.write_bytes(b"fine text\n" * 10 + b"nul \x00 byte\n")
    with pytest.raises(LlmctlError, match=r"looks binary \(NUL byte at offset 104, line 11\)"):
        list(DocReader([f], block_bytes=16))


def test_jsonl_reader_with_tiny_blocks_keeps_rows_and_line_numbers(tmp_path):
    from llmctl.tokenize import DocReader

    rows = [{"text": f"row {i} — café"} for i in range(6)]
    f = write_jsonl(tmp_path / "r.jsonl", rows)
    assert list(DocReader([f], block_bytes=5)) == [r["text"] for r in rows]
    f.write_text(f.read_text() + "\n{broken\n")
    with pytest.raises(LlmctlError, match=r"line 8 is not valid JSON"):
        list(DocReader([f], block_bytes=5))
