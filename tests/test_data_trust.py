"""Data files trusted no further than they deserve: token-data indexes, JSONL lines, non-finite options, and
preference pairs whose chosen equals rejected (issue 24)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import write_jsonl
from llmctl.errors import LlmctlError

FIX = "re-run `llmctl tokenize encode` to write the data dir again"


def _message(fn) -> str:
    with pytest.raises(LlmctlError) as exc:
        fn()
    return exc.value.one_line()


# ---- token-data index -------------------------------------------------------------------------------------------


def _data_dir(root: Path, tok_dir: Path, ids=range(1, 41)) -> Path:
    """A one-split data dir as `tokenize encode` writes it, recording the tokenizer in tok_dir."""
    from llmctl.data.token_data import ShardWriter, file_sha256, write_index
    from llmctl.tokenize import load_tokenizer_spec

    root.mkdir(parents=True)
    with ShardWriter(root, "train", "uint16") as w:
        w.add_document(list(ids))
    splits = {"train": w.close()}
    vocab = load_tokenizer_spec(str(tok_dir)).vocab_size
    tokenizer = {"name": None, "path": str(tok_dir), "vocab_size": vocab, "eos_id": 0}
    tokenizer["sha256"] = file_sha256(tok_dir / "tokenizer.json")
    write_index(root, {"dtype": "uint16", "tokenizer": tokenizer, "splits": splits})
    return root


def _edit(data: Path, change) -> Path:
    """Rewrite data's index.json with change(index) applied; returns the index path."""
    index_path = data / "index.json"
    index = json.loads(index_path.read_text())
    change(index)
    index_path.write_text(json.dumps(index))
    return index_path


def _shard(index: dict) -> dict:
    return index["splits"]["train"]["shards"][0]


def test_a_good_index_reads_and_its_tokens_come_back(tmp_path, tiny_llama_dir):
    from llmctl.data.token_data import TokenData

    data = TokenData(_data_dir(tmp_path / "d", tiny_llama_dir))
    assert list(data.tokens("train")[:3]) == [1, 2, 3] and data.num_tokens("train") == 40


@pytest.mark.parametrize(
    "name,why",
    [
        ("/etc/passwd", "an absolute path"),
        ("../outside.bin", "a path that leaves the data dir with '..'"),
        ("sub/../../outside.bin", "a path that leaves the data dir with '..'"),
    ],
)
def test_a_shard_path_outside_the_data_dir_is_refused(tmp_path, tiny_llama_dir, cli, name, why):
    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    (tmp_path / "outside.bin").write_bytes(b"\0\0" * 40)
    index_path = _edit(data, lambda ix: _shard(ix).update(file=name))
    want = (
        f"{index_path} names splits.train.shards[0].file {name!r}: {why}; "
        f"an index may only name files inside {data}; {FIX}"
    )
    r = cli("tokenize", "stats", "--input", data)
    assert (r.exit_code, r.stderr) == (1, f"Error: {want}\n")


def test_a_shard_that_links_outside_the_data_dir_is_refused(tmp_path, tiny_llama_dir):
    from llmctl.data.token_data import TokenData

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    outside = tmp_path / "elsewhere.bin"
    os.replace(data / "train-00000.bin", outside)
    (data / "train-00000.bin").symlink_to(outside)
    assert _message(lambda: TokenData(data)).startswith(
        f"{data / 'index.json'} names splits.train.shards[0].file 'train-00000.bin', a link to {outside.resolve()} "
        "outside the data dir; "
    )


def test_the_doc_offsets_path_is_confined_too(tmp_path, tiny_llama_dir):
    from llmctl.data.token_data import read_index

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    index_path = _edit(data, lambda ix: ix["splits"]["train"].update(doc_offsets="/tmp/docs.npy"))
    assert _message(lambda: read_index(data)).startswith(
        f"{index_path} names splits.train.doc_offsets '/tmp/docs.npy': an absolute path; "
    )


@pytest.mark.parametrize(
    "value,problem",
    [
        (0, "has tokenizer.vocab_size 0, expected a positive whole number"),
        (-5, "has tokenizer.vocab_size -5, expected a positive whole number"),
        (True, "has tokenizer.vocab_size true, expected a positive whole number"),
        ("4096", 'has tokenizer.vocab_size "4096", expected a positive whole number'),
        (10**12, f"has tokenizer.vocab_size {10**12}, more than any tokenizer has (at most {1 << 24})"),
        (70000, "has tokenizer.vocab_size 70000 but dtype uint16, which holds token ids below 65536 only"),
    ],
)
def test_vocab_size_must_be_a_sane_count_that_fits_the_dtype(tmp_path, tiny_llama_dir, value, problem):
    from llmctl.data.token_data import TokenData

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    index_path = _edit(data, lambda ix: ix["tokenizer"].update(vocab_size=value))
    assert _message(lambda: TokenData(data)) == f"{index_path} {problem}; {FIX}"


def test_a_shard_of_a_part_token_is_refused(tmp_path, tiny_llama_dir):
    from llmctl.data.token_data import TokenData

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    with open(data / "train-00000.bin", "ab") as fh:
        fh.write(b"\x01")
    assert _message(lambda: TokenData(data)) == (
        f"shard {data / 'train-00000.bin'} is 81 bytes, not a whole number of uint16 tokens (2 bytes each); "
        f"the shard is truncated or damaged; {FIX}"
    )


def test_a_shard_whose_size_is_not_the_recorded_count_is_refused(tmp_path, tiny_llama_dir, cli):
    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    index_path = _edit(data, lambda ix: (_shard(ix).update(tokens=400), ix["splits"]["train"].update(tokens=400)))
    r = cli("tokenize", "stats", "--input", data)
    assert (r.exit_code, r.stderr) == (
        1,
        f"Error: shard {data / 'train-00000.bin'} holds 40 tokens, {index_path} says 400 "
        f"(splits.train.shards[0].tokens); the shard is truncated or not from this index; {FIX}\n",
    )


def test_a_split_total_that_is_not_its_shards_sum_is_refused(tmp_path, tiny_llama_dir):
    from llmctl.data.token_data import read_index

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    index_path = _edit(data, lambda ix: ix["splits"]["train"].update(tokens=10**9))
    assert _message(lambda: read_index(data)) == (
        f"{index_path} says splits.train.tokens is {10**9}, but its shards hold 40 tokens; {FIX}"
    )


def test_a_missing_shard_is_refused_when_the_index_is_read(tmp_path, tiny_llama_dir):
    from llmctl.data.token_data import read_index

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    (data / "train-00000.bin").unlink()
    assert _message(lambda: read_index(data)) == (
        f"shard {data / 'train-00000.bin'} listed in {data / 'index.json'} is missing; {FIX}"
    )


def test_a_deeply_nested_index_is_one_line(tmp_path):
    from llmctl.data.token_data import read_index

    (tmp_path / "index.json").write_text("[" * 200_000)
    assert _message(lambda: read_index(tmp_path)) == (
        f"{tmp_path / 'index.json'} is damaged (not valid JSON: nested too deeply); {FIX}"
    )


def test_pretrain_refuses_a_vocab_size_its_tokenizer_does_not_have(tmp_path, tiny_llama_dir, cli, llmctl_home):
    from llmctl.data.token_data import TokenData
    from llmctl.pretrain.data import resolve_tokenizer

    data = _data_dir(tmp_path / "d", tiny_llama_dir)
    _edit(data, lambda ix: ix["tokenizer"].update(vocab_size=60000))  # sha256 of tokenizer.json still matches
    want = (
        f"{data}/index.json records tokenizer.vocab_size 60000, but its tokenizer {tiny_llama_dir} has 384 tokens; "
        "the index is damaged or the tokenizer changed; re-encode the data with `llmctl tokenize encode`"
    )
    assert _message(lambda: resolve_tokenizer(TokenData(data), None)) == want
    assert _message(lambda: resolve_tokenizer(TokenData(data), str(tiny_llama_dir))) == want
    r = cli("pretrain", "--data", data, "--name", "v", "--device", "cpu")
    assert (r.exit_code, r.stderr) == (1, f"Error: {want}\n")
    assert not (llmctl_home / "runs" / "v").exists()


# ---- records reader ---------------------------------------------------------------------------------------------

HINT = 'each line must be one JSON object, e.g. {"prompt": "…"}'


def test_a_jsonl_line_over_the_cap_is_refused_without_reading_the_file_whole(tmp_path, monkeypatch, cli, tiny_model):
    from llmctl.data import records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1 << 20)
    inp = tmp_path / "in.jsonl"
    with open(inp, "wb") as fh:
        fh.write(b'{"prompt": "ok"}\n')
        fh.write(b"x" * (3 << 20))  # 3 MiB and no line end
    r = cli("generate", "--model", tiny_model, "--input", inp)
    assert (r.exit_code, r.stderr) == (
        1,
        f"Error: input file {inp} line 2 is longer than 1 MiB with no line end; give one JSON object per line "
        '(.jsonl), e.g. {"prompt": "…"}, or a JSON array as .json\n',
    )


def test_a_line_just_under_the_cap_still_reads(tmp_path, monkeypatch):
    from llmctl.data import records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 3 << 20)
    inp = tmp_path / "long.jsonl"
    text = "y" * ((3 << 20) - 20)
    write_jsonl(inp, [{"text": text}, {"text": "short"}])
    rows = records.read_records(inp, what="data file")
    assert [r.where for r in rows] == ["line 1", "line 2"] and rows[0].value["text"] == text


def test_deeply_nested_jsonl_names_the_file_and_line(tmp_path, cli, tiny_model):
    inp = tmp_path / "deep.jsonl"
    inp.write_text('{"prompt": "ok"}\n' + "[" * 200_000 + "\n")
    r = cli("generate", "--model", tiny_model, "--input", inp)
    assert (r.exit_code, r.stderr) == (
        1,
        f"Error: input file {inp} line 2 is not valid JSON (nested too deeply to read); {HINT}\n",
    )


def test_other_decode_errors_name_the_file_and_line(tmp_path):
    from llmctl.data.records import read_records

    inp = tmp_path / "digits.jsonl"
    inp.write_text('{"text": "a"}\n{"text": "b"}\n{"n": ' + "7" * 5000 + "}\n")
    assert _message(lambda: read_records(inp, what="data file")) == (
        f"data file {inp} line 3 is not valid JSON (Exceeds the limit (4300 digits) for integer string conversion: "
        'value has 5000 digits); each line must be one JSON object, e.g. {"text": "…"}'
    )


def test_a_deeply_nested_json_document_is_one_line(tmp_path):
    from llmctl.data.records import read_records

    inp = tmp_path / "deep.json"
    inp.write_text("[" * 200_000)
    assert _message(lambda: read_records(inp, what="data file")).startswith(
        f"data file {inp} is not valid JSON (nested too deeply to read); "
    )


# ---- non-finite numeric options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,label",
    [
        (["--rope-scaling", "yarn", "--rope-factor", "inf"], "--rope-factor inf"),
        (["--rope-scaling", "yarn", "--rope-factor", "nan"], "--rope-factor nan"),
        (["--rope-scaling", "yarn", "--set", "rope.factor=.inf"], "--set rope.factor=.inf"),
        (["--rope-scaling", "yarn", "--set", "rope.factor=inf"], "--set rope.factor=inf"),
        (["--rope-scaling", "yarn", "--set", "rope.factor=1e999"], "--set rope.factor=1e999"),
    ],
)
def test_rope_factor_refuses_infinity_and_nan(cli, tiny_model, args, label):
    r = cli("generate", "--model", tiny_model, "--prompt", "hi", *args)
    assert (r.exit_code, r.stderr) == (2, f"Error: {label}: must be a finite number (greater than 1)\n")


def test_top_p_refuses_nan_and_negative_infinity(cli, tiny_model):
    r = cli("generate", "--model", tiny_model, "--prompt", "hi", "--top-p", "-inf")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: --top-p -inf: must be a finite number (greater than 0 and at most 1)")
    r = cli("generate", "--model", tiny_model, "--prompt", "hi", "--set", "top_p=.nan")
    assert r.exit_code == 2 and r.stderr.startswith("Error: --set top_p=.nan: must be a finite number")


def test_a_profile_key_of_infinity_is_refused(cli, tiny_model, tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("temperature: .inf\n")
    r = cli("generate", "--model", tiny_model, "--prompt", "hi", "--profile", profile)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {profile}: temperature .inf: must be a finite number (at least 0")


def test_a_float_list_refuses_a_non_finite_item():
    from llmctl.config.profiles import resolve_config
    from llmctl.errors import UsageError

    with pytest.raises(UsageError) as exc:
        resolve_config("eval", None, ["passkey.depths=0,inf"])
    assert exc.value.message == "--set passkey.depths=0,inf: must be finite numbers (fractions from 0 to 1)"


def test_finite_values_and_ordinary_text_errors_are_unchanged():
    from llmctl.config.profiles import resolve_config
    from llmctl.errors import UsageError

    assert resolve_config("generate", None, ["top_p=0.5"])["top_p"] == 0.5
    with pytest.raises(UsageError) as exc:
        resolve_config("generate", None, ["top_p=lots"])
    assert exc.value.message == "--set top_p=lots: must be float, not text"


# ---- preference pairs whose chosen equals rejected ---------------------------------------------------------------


def _pairs(same: int, different: int) -> list[dict]:
    rows = [{"prompt": f"q{i}", "chosen": "the same", "rejected": "the same"} for i in range(same)]
    return rows + [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(different)]


def test_a_file_of_only_identical_pairs_is_refused(tmp_path):
    from llmctl.data.preferences import check_pairs

    path = tmp_path / "pairs.jsonl"
    assert _message(lambda: check_pairs(_pairs(3, 0), path)) == (
        f"every one of the 3 preference pairs in {path} has chosen identical to rejected: a preference objective "
        "learns nothing from them; give pairs whose rejected reply differs from the chosen one"
    )


def test_some_identical_pairs_are_counted_not_refused(tmp_path, tiny_llama_dir):
    from llmctl.data.preferences import check_pairs, tokenize_unpaired
    from llmctl.models.loading import load_tokenizer

    pairs = _pairs(2, 3)
    assert check_pairs(pairs, tmp_path / "pairs.jsonl") == 2
    assert check_pairs(_pairs(0, 3), tmp_path / "pairs.jsonl") == 0
    tok = load_tokenizer(str(tiny_llama_dir))
    examples, stats = tokenize_unpaired(pairs, "preference", tok, "auto", 64)
    assert len(examples) == 10 and stats.to_dict()["identical_pairs"] == 2


def test_dpo_on_only_identical_pairs_is_refused_before_the_model_loads(cli, tiny_model, tmp_path):
    import json

    path = tmp_path / "same.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pairs(6, 0)))
    r = cli("finetune", "--model", tiny_model, "--data", path, "--objective", "dpo", "--name", "d", "--max-steps", 1)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: every one of the 6 preference pairs in {path} has chosen identical")
