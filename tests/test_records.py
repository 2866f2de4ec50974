"""The one records reader (llmctl/data/records.py), the record-layout table (llmctl/data/layouts.py), index.json checks,
the --tokenizer resolver, and every data-reading command's first error line for bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import write_jsonl
from llmctl.data.records import DataFile, read_records, read_text
from llmctl.errors import LlmctlError

_FIX_UTF8 = "convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
_RECORDS_HINT = 'give one JSON object per line (.jsonl), e.g. {"text": "…"}, a JSON array of them, or .parquet'
_KNOWN = (
    "alpaca (instruction, input?, output), chat (messages), text (text), preference (prompt, chosen, "
    "rejected), hh-rlhf (chosen, rejected), chat-preference (prompt?, chosen, rejected), completion (prompt, "
    "completion|output|response?), kto (prompt, completion, label), prompts (prompt, …)"
)


def _message(fn) -> str:
    with pytest.raises(LlmctlError) as exc:
        fn()
    return exc.value.one_line()


def _records(path, **kw) -> list:
    return [(r.where, r.value) for r in DataFile(path, **kw).check().records()]


# ---- reading: happy paths ---------------------------------------------------------------------------------


def test_jsonl_with_bom_crlf_and_blank_lines(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9"}\r\n\r\n{"text": "b"}\r\n')
    assert _records(f) == [("line 1", {"text": "café"}), ("line 3", {"text": "b"})]


def test_json_array_single_object_and_jsonl_in_a_json_file(tmp_path):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    assert _records(arr) == [("item 1", {"text": "a"}), ("item 2", {"text": "b"})]
    one = tmp_path / "one.json"
    one.write_text('{"text": "only"}')
    assert _records(one) == [("item 1", {"text": "only"})]
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert _records(lines) == [("line 1", {"text": "a"}), ("line 2", {"text": "b"})]


def test_records_format_sniffs_files_without_a_known_suffix(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text('[{"prompt": "p"}]')
    assert _records(f, fmt="records") == [("item 1", {"prompt": "p"})]
    f.write_text('{"prompt": "p"}\n')
    assert _records(f, fmt="records") == [("line 1", {"prompt": "p"})]


def test_parquet_rows_and_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "n": [1, 2, 3]}), f)
    assert _records(f) == [
        ("row 1", {"text": "a", "n": 1}),
        ("row 2", {"text": None, "n": 2}),
        ("row 3", {"text": "c", "n": 3}),
    ]
    source = DataFile(f)
    assert [r.value for r in source.records(columns=["n"])] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert source.bytes_read == f.stat().st_size
    assert _message(lambda: list(DataFile(f, what="data file").records(columns=["body"]))) == (
        f"data file {f} has no column 'body' (columns: text, n); each row needs the fields of a record "
        'like {"text": "…"}'
    )


def test_text_keeps_line_ends_drops_the_bom_and_streams_normalised_blocks(tmp_path):
    f = tmp_path / "t.txt"
    raw = "\ufeffFirst line\r\nsecond — café\r\n\r\nthird\n"
    f.write_bytes(raw.encode("utf-8"))
    assert read_text(f) == raw[1:]
    source = DataFile(f, block_bytes=4)
    assert list(source.lines()) == ["First line", "second — café", "", "third"]
    assert source.bytes_read == f.stat().st_size


# ---- reading: errors ----------------------------------------------------------------------------------------


def test_missing_folder_and_empty_files(tmp_path):
    nope = tmp_path / "nope.jsonl"
    assert _message(lambda: read_records(nope, "data file", "--data")) == (
        f"data file {nope} does not exist; check the --data path"
    )
    assert _message(lambda: read_records(tmp_path, "data file", "--data")) == (
        f"data file {tmp_path} is a folder; pass a file: .jsonl, .json or .parquet"
    )
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert _message(lambda: read_records(empty, "data file", "--data")) == (
        f"data file {empty} is empty; {_RECORDS_HINT}"
    )
    blank = tmp_path / "b.jsonl"
    blank.write_text("\n  \n")
    assert _message(lambda: read_records(blank, "data file")) == f"data file {blank} has no records; {_RECORDS_HINT}"
    txt = tmp_path / "e.txt"
    txt.write_text("\n \n")
    assert _message(lambda: read_text(txt)) == (
        f"text file {txt} has no text (only blank lines); give a file with some text in it"
    )


def test_encoding_errors_name_offset_and_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert _message(lambda: read_records(latin, "data file")) == (
        f"data file {latin} is not UTF-8 text (byte 0xe9 at offset 28, line 2); {_FIX_UTF8}"
    )
    binary = tmp_path / "w.bin"
    binary.write_bytes(b"abc\n\x00\x01\x02")
    assert _message(lambda: read_text(binary, what="text file")) == (
        f"text file {binary} looks binary (NUL byte at offset 4, line 2); "
        "give a UTF-8 text file (.txt, .jsonl or .json) or a .parquet file"
    )
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes('{"text": "a"}\n'.encode("utf-16"))
    assert _message(lambda: read_records(utf16, "data file")) == (
        f"data file {utf16} is UTF-16 text, not UTF-8; convert it to UTF-8, e.g. `iconv -f utf-16 -t utf-8 IN > OUT`"
    )


def test_a_bad_byte_late_in_a_large_file_is_found_while_streaming(tmp_path):
    f = tmp_path / "late.jsonl"
    f.write_bytes(b'{"text": "fine"}\n' * 5000 + b'{"text": "\xff"}\n')
    source = DataFile(f, what="data file", block_bytes=1024).check()  # the first 64 KiB are fine
    assert _message(lambda: list(source.records())) == (
        f"data file {f} is not UTF-8 text (byte 0xff at offset 85010, line 5001); {_FIX_UTF8}"
    )


def test_structure_errors(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "a"}\n{"text": "b",}\n')
    assert _message(lambda: read_records(f, "data file")) == (
        f"data file {f} line 2 is not valid JSON (Expecting property name enclosed in double quotes at column 14); "
        'each line must be one JSON object, e.g. {"text": "…"}'
    )
    f.write_text('{"text": "a"}\n["not", "an", "object"]\n')
    assert _message(lambda: read_records(f, "data file")) == (
        f'data file {f} line 2 is a JSON array, not an object; each record must be a JSON object like {{"text": "…"}}'
    )
    doc = tmp_path / "bad.json"
    doc.write_text('[{"text": "a"},\n {"text": "b"')
    assert _message(lambda: read_records(doc, "data file")) == (
        f"data file {doc} is not valid JSON (Expecting ',' delimiter at line 2 column 14); {_RECORDS_HINT}"
    )
    doc.write_text('"just a string"')
    assert _message(lambda: read_records(doc, "data file")) == (
        f"data file {doc} holds a JSON string, not records; {_RECORDS_HINT}"
    )


def test_damaged_parquet(tmp_path):
    fake = tmp_path / "fake.parquet"
    fake.write_text("text\nhello\n")
    assert _message(lambda: read_records(fake, "data file")) == (
        f"data file {fake} is not a Parquet file (it does not start with PAR1); "
        "give a .parquet file written by pyarrow or pandas, or rename it"
    )
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(b"PAR1" + b"\x00" * 40)
    message = _message(lambda: read_records(cut, "data file"))
    assert message.startswith(f"data file {cut} cannot be read as Parquet (")
    assert message.endswith("; the file may be truncated or damaged; write it again")


# ---- layouts ---------------------------------------------------------------------------------------------------


def test_detect_each_layout_and_the_most_specific_wins():
    from llmctl.data.layouts import detect, names

    assert names() == [
        "alpaca",
        "chat",
        "text",
        "preference",
        "hh-rlhf",
        "chat-preference",
        "completion",
        "kto",
        "prompts",
    ]
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert detect({"instruction": "i", "output": "o"}).name == "alpaca"
    assert detect(chat).name == "chat"
    assert detect({"text": "t", "id": 3}).name == "text"
    assert detect({"prompt": "p", "chosen": "c", "rejected": "r"}).name == "preference"
    assert detect({"prompt": "p", "response": "r"}).name == "completion"
    assert detect({"prompt": "p"}).name == "completion"
    # preference is what {prompt, chosen, rejected} is, though it also has completion's prompt
    assert detect({"prompt": "p", "chosen": "c", "rejected": "r"}).use == "preference"


def test_normalised_records_and_their_text():
    from llmctl.data.layouts import detect, record_text

    rec = {"prompt": "Q?", "output": "A.", "id": 1}
    assert detect(rec).normalize(rec) == {"prompt": "Q?", "completion": "A."}
    assert record_text(rec) == "Q?\nA."
    assert record_text({"instruction": "Do", "input": "", "output": "Done"}) == "Do\nDone"
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert record_text(chat) == "a\nb"
    assert record_text({"prompt": "p", "chosen": "c", "rejected": "r"}) == "p\nc"
    assert record_text("a bare string") == "a bare string"


def test_layout_errors_name_the_fields_and_the_known_layouts():
    from llmctl.data.layouts import detect

    assert _message(lambda: detect({"question": "q", "answer": "a"})) == (
        f"record has none of the known record layouts (fields: answer, question); use one of: {_KNOWN}"
    )
    assert _message(lambda: detect({"messages": "hi"})) == (
        'record does not fit the chat layout: field \'messages\' is a JSON string, not a list of {"role", "content"} '
        'objects; chat records look like {"messages": [{"role": "user", "content": "…"}, {"role": "assistant", '
        '"content": "…"}]}'
    )
    assert _message(lambda: detect({"messages": [{"role": "user"}]})).startswith(
        "record does not fit the chat layout: messages 1 has no string 'content'"
    )
    assert _message(lambda: detect({"instruction": "i", "output": 4})).startswith(
        "record does not fit the alpaca layout: field 'output' is a JSON number, not a string"
    )


def test_read_dataset_checks_every_record_against_the_first(tmp_path):
    from llmctl.data.layouts import read_dataset

    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "i", "text": "t"}])
    assert _message(lambda: read_dataset(f)) == (
        f"data file {f} line 2 does not fit the alpaca layout of line 1: has no field 'output' (fields: instruction, "
        'text); give every record the same layout, e.g. {"instruction": "…", "input": "", "output": "…"}'
    )
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    assert _message(lambda: read_dataset(f, "alpaca")) == (
        f"data file {f} line 1 looks like text data, not alpaca; set data.format to auto or text"
    )
    f = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "q", "output": "o"}])
    records, layout = read_dataset(f)
    assert layout.name == "completion" and records == [
        {"prompt": "p", "completion": "c"},
        {"prompt": "q", "completion": "o"},
    ]


def test_completion_records_train_like_instructions(tmp_path):
    from llmctl.data.sft import read_records, segments

    class Tok:
        eos_token = "</s>"

    records, kind = read_records(write_jsonl(tmp_path / "c.jsonl", [{"prompt": "2+2?", "response": "4"}]))
    assert kind == "completion"
    pieces = segments(records[0], kind, "alpaca", Tok())
    assert [trained for _, trained in pieces] == [False, True]
    assert "2+2?" in pieces[0][0] and pieces[1][0] == "4</s>"


# ---- calibration ---------------------------------------------------------------------------------------------


def test_calibration_reads_any_layout_parquet_and_reports_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmctl.compress.calibration import read_source

    mixed = write_jsonl(tmp_path / "m.jsonl", [{"text": "one"}, {"prompt": "two", "output": "three"}, "four"])
    assert read_source(str(mixed))[0] == "one\n\ntwo\nthree\n\nfour"
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"instruction": ["a"], "output": ["b"]}), pqf)
    assert read_source(str(pqf))[0] == "a\nb"
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"text": "\xe9t\xe9"}\n')
    assert _message(lambda: read_source(str(latin))) == (
        f"calibration data {latin} is not UTF-8 text (byte 0xe9 at offset 10, line 1); {_FIX_UTF8}"
    )
    odd = write_jsonl(tmp_path / "o.jsonl", [{"text": "fine"}, {"question": "q"}])
    assert _message(lambda: read_source(str(odd))) == (
        f"calibration data {odd} line 2 has none of the known record layouts (fields: question); use one of: {_KNOWN}"
    )


def _tokenizer_and_data(tmp_path):
    """A 300-token BPE registered as 'tok' and a data dir encoded with it (no val split)."""
    from llmctl.config.profiles import resolve_config
    from llmctl.tokenize import encode_corpus, train_tokenizer

    docs = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog, café {i}." for i in range(30)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    config = resolve_config("tokenize", None, None, {"train.vocab_size": 300, "encode.val_fraction": 0.0})
    train_tokenizer([corpus], config, name="tok")
    encode_corpus("tok", [corpus], config, output=tmp_path / "data")
    return docs, corpus, tmp_path / "data"


def test_calibration_from_a_tokenized_data_dir_decodes_its_documents(tmp_path):
    from llmctl.compress.calibration import read_source

    docs, _, data = _tokenizer_and_data(tmp_path)
    assert read_source(str(data))[0] == "\n\n".join(docs)


# ---- index.json ------------------------------------------------------------------------------------------------


def test_damaged_index_json_names_the_file_the_key_and_the_fix(tmp_path, cli):
    from llmctl.data.token_data import TokenData, read_index

    _, _, data = _tokenizer_and_data(tmp_path)
    index_path = data / "index.json"
    good = json.loads(index_path.read_text())
    fix = "re-run `llmctl tokenize encode` to write the data dir again"
    index_path.write_text(json.dumps({k: v for k, v in good.items() if k != "dtype"}))
    assert _message(lambda: TokenData(data)) == f"{index_path} lacks key 'dtype'; {fix}"
    r = cli("tokenize", "stats", "--input", data)
    assert r.exit_code == 1 and r.stderr == f"Error: {index_path} lacks key 'dtype'; {fix}\n"
    broken = {**good, "splits": {"train": {"tokens": 3, "shards": [{"file": "train-00000.bin"}], "doc_offsets": "x"}}}
    index_path.write_text(json.dumps(broken))
    assert _message(lambda: read_index(data)) == f"{index_path} lacks key 'splits.train.shards[0].tokens'; {fix}"
    index_path.write_text('{"format": "llmctl-tokens/1", ')
    assert _message(lambda: read_index(data)) == (
        f"{index_path} is damaged (not valid JSON: Expecting property name enclosed in double quotes at line 1); {fix}"
    )


# ---- --tokenizer ---------------------------------------------------------------------------------------------------


def test_tokenizer_folder_accepts_every_documented_form(tmp_path, tiny_model, tiny_llama_dir):
    from llmctl.models.registry import Registry
    from llmctl.tokenize import tokenizer_folder

    _, _, data = _tokenizer_and_data(tmp_path)
    tok_dir = Path(Registry().find("tok").path)
    assert tokenizer_folder("tok") == ("tok", tok_dir.resolve())
    assert tokenizer_folder(tiny_model) == ("tiny", tiny_llama_dir.resolve())
    assert tokenizer_folder(str(tiny_llama_dir)) == (None, tiny_llama_dir.resolve())
    assert tokenizer_folder(str(tiny_llama_dir / "tokenizer.json")) == (None, tiny_llama_dir.resolve())
    assert tokenizer_folder(str(data)) == ("tok", tok_dir.resolve())
    hint = (
        "give a tokenizer or model name from `llmctl models list`, a folder with tokenizer.json, "
        "a tokenizer.json file or a tokenized data dir"
    )
    other = tiny_llama_dir / "config.json"
    assert _message(lambda: tokenizer_folder(str(other))) == (
        f"--tokenizer '{other}': {other} is a file, not tokenizer.json; {hint}"
    )
    message = _message(lambda: tokenizer_folder("nope"))
    assert message.startswith("--tokenizer 'nope': no model named 'nope'") and message.endswith(hint)


# ---- commands: the first Error line for bad files ------------------------------------------------------------


def _first_error(result) -> str:
    """The first non-blank line of stderr (`tokenize encode`'s transient progress bar leaves a blank line)."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _bad_files(tmp_path, field: str = "text") -> dict[str, Path]:
    """Bad files whose first record (where there is one) has `field`."""
    files = {
        "latin.jsonl": b'{"%s": "caf\xe9"}\n',
        "binary.jsonl": b"\x00\x01\x02\x03",
        "broken.jsonl": b'{"%s": "a"}\n{oops}\n',
        "array.jsonl": b'["a", "b"]\n',
    }
    out = {}
    for name, raw in files.items():
        out[name] = tmp_path / name
        out[name].write_bytes(raw.replace(b"%s", field.encode()))
    return out


def _expected(what: str, path: Path, name: str, example: str = '{"text": "…"}', field: str = "text") -> str:
    at = len(f'{{"{field}": "caf')  # where the latin-1 é is
    kinds = ".jsonl or .json" if what != "input" else ".txt, .jsonl or .json"
    return {
        "latin.jsonl": f"Error: {what} {path} is not UTF-8 text (byte 0xe9 at offset {at}, line 1); {_FIX_UTF8}",
        "binary.jsonl": (
            f"Error: {what} {path} looks binary (NUL byte at offset 0, line 1); give a UTF-8 text "
            f"file ({kinds}) or a .parquet file"
        ),
        "broken.jsonl": (
            f"Error: {what} {path} line 2 is not valid JSON (Expecting property name enclosed in "
            "double quotes at column 2); "
            f"each line must be one JSON object, e.g. {example}"
        ),
        "array.jsonl": (
            f"Error: {what} {path} line 1 is a JSON array, not an object; each record must be a JSON "
            f"object like {example}"
        ),
    }[name]


def test_finetune_bad_data_files(cli, tiny_model, tmp_path):
    alpaca = '{"instruction": "…", "input": "", "output": "…"}'
    for name, path in _bad_files(tmp_path, "text").items():
        r = cli("finetune", "--model", tiny_model, "--data", path, "--name", "x")
        assert r.exit_code == 1 and _first_error(r) == _expected("data file", path, name, alpaca), name
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "i"}])
    r = cli("finetune", "--model", tiny_model, "--data", odd, "--name", "x")
    assert r.exit_code == 1 and _first_error(r) == (
        f"Error: data file {odd} line 2 does not fit the alpaca layout of line 1: has no field 'output' "
        f"(fields: instruction); give every record the same layout, e.g. {alpaca}"
    )
    assert not (tmp_path / "llmctl-home" / "runs" / "x").exists()


def test_quantize_and_prune_bad_calibration_files(cli, tiny_model, tmp_path):
    files = _bad_files(tmp_path)
    for name in ("latin.jsonl", "broken.jsonl"):
        r = cli("quantize", "--model", tiny_model, "--algo", "gptq", "--calib-data", files[name], "--name", "q")
        assert r.exit_code == 1 and _first_error(r) == _expected("calibration data", files[name], name), name
    r = cli(
        "prune",
        "--model",
        tiny_model,
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--calib-data",
        files["binary.jsonl"],
        "--name",
        "p",
    )
    assert r.exit_code == 1 and _first_error(r) == _expected("calibration data", files["binary.jsonl"], "binary.jsonl")
    r = cli("quantize", "--model", tiny_model, "--algo", "gptq", "--calib-data", files["array.jsonl"], "--name", "q")
    assert r.exit_code == 1 and _first_error(r) == (
        f"Error: calibration data {files['array.jsonl']} line 1 is a JSON array, not an object; use one of: {_KNOWN}"
    )


def test_generate_bad_input_files(cli, tiny_model, tmp_path):
    for name, path in _bad_files(tmp_path, "prompt").items():
        r = cli("generate", "--model", tiny_model, "--input", path)
        expected = _expected("input file", path, name, '{"prompt": "…"}', "prompt")
        assert r.exit_code == 1 and _first_error(r) == expected, name
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": 3}])
    r = cli("generate", "--model", tiny_model, "--input", odd)
    assert r.exit_code == 1 and _first_error(r) == (
        f"Error: input file {odd} line 1 does not fit the completion layout: field 'prompt' is a JSON number, not a "
        'string; give {"prompt": "…"} or {"messages": [{"role": "user", "content": "…"}]}'
    )


def test_tokenize_train_and_encode_bad_input_files(cli, tmp_path):
    _tokenizer_and_data(tmp_path)
    for name, path in _bad_files(tmp_path).items():
        r = cli("tokenize", "train", "--input", path, "--vocab-size", 300, "--name", "t2")
        assert r.exit_code == 1 and _first_error(r) == _expected("input", path, name), name
        r = cli("tokenize", "encode", "--tokenizer", "tok", "--input", path, "--output", tmp_path / "o")
        assert r.exit_code == 1 and _first_error(r) == _expected("input", path, name), name
    assert not (tmp_path / "o").exists()


def test_tokenize_output_checked_before_any_work(cli, tmp_path, monkeypatch):
    import llmctl.tokenize.pipeline as pipeline
    import llmctl.tokenize.train as train

    _, corpus, _ = _tokenizer_and_data(tmp_path)

    def never(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(train, "_train", never)
    monkeypatch.setattr(pipeline.Encoder, "run", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = cli("tokenize", "train", "--input", corpus, "--vocab-size", 300, "--output", blocker / "tok")
    assert r.exit_code == 1 and _first_error(r) == (
        f"Error: cannot write output folder {blocker / 'tok'}: {blocker} is a file, not a folder; "
        "pick a path whose parent folders are folders"
    )
    r = cli("tokenize", "encode", "--tokenizer", "tok", "--input", corpus, "--output", blocker / "sub" / "data")
    assert r.exit_code == 1 and _first_error(r) == (
        f"Error: cannot write output dir {blocker / 'sub' / 'data'}: {blocker} is a file, not a folder; "
        "pick a path whose parent folders are folders"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: an unwritable folder cannot be made")
def test_tokenize_output_in_an_unwritable_folder(cli, tmp_path):
    _, corpus, _ = _tokenizer_and_data(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        r = cli("tokenize", "train", "--input", corpus, "--vocab-size", 300, "--output", locked / "tok")
        assert r.exit_code == 1 and _first_error(r) == (
            f"Error: cannot write output folder {locked / 'tok'}: {locked} is not writable; "
            "pick a folder you can write to"
        )
    finally:
        locked.chmod(0o700)
