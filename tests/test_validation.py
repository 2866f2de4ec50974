"""One validation layer: every range/choice rule reachable from a flag gives exit 2 and the same rule text
whether the value came from the flag, `--set` or a profile file, naming the source as the user wrote it."""

from __future__ import annotations

import json

import pytest
import typer

from llmctl.cli import eval as eval_cmd
from llmctl.cli import export, finetune, generate, merge_lora, prune, quantize, serve, tokenize
from llmctl.cli._common import TRAIN_OPTIONS
from llmctl.cli.main import app
from llmctl.config.profiles import schema_for, show_value
from llmctl.config.schema import Field

# (command path, schema, option map of that command, arguments it needs besides the one under test)
COMMANDS = [
    (("generate",), "generate", generate.OPTIONS, ()),
    (("eval",), "eval", eval_cmd.OPTIONS, ()),
    (("eval", "compare"), "eval", eval_cmd.OPTIONS, ("m1",)),
    (("tokenize", "train"), "tokenize", tokenize.TRAIN_OPTIONS, ()),
    (("tokenize", "encode"), "tokenize", tokenize.ENCODE_OPTIONS, ("-t", "tok")),
    (("tokenize", "stats"), "tokenize", tokenize.STATS_OPTIONS, ()),
    (("pretrain",), "pretrain", TRAIN_OPTIONS, ("--data", "d", "--name", "n")),
    (("finetune",), "finetune", finetune.OPTIONS, ("--name", "n")),
    (("merge-lora",), "merge-lora", merge_lora.OPTIONS, ("--adapter", "a", "--name", "n")),
    (("quantize",), "quantize", quantize.OPTIONS, ("--name", "n")),
    (("prune",), "prune", prune.OPTIONS, ("--name", "n")),
    (("serve",), "serve", serve.OPTIONS, ()),
    (("export",), "export", export.OPTIONS, ("--output", "o")),
]

# A value breaking a field's own `check` (the bounds and choices are broken generically below).
CHECK_BREAKERS = {
    ("eval", "limit"): 1.5,
    ("eval", "batch_size"): "0",
    ("prune", "pattern"): "4:2",
    ("eval", "perplexity.length_buckets"): [2048, 512],
    ("eval", "passkey.context_lengths"): [4096, 32],
    ("export", "bits"): 5,
    ("serve", "allowed_hosts"): ["*"],
    ("finetune", "reward.function"): "exact",
    **{
        (command, key): "gpu"
        for command, key in [
            ("generate", "device"),
            ("serve", "device"),
            ("eval", "device"),
            ("pretrain", "train.device"),
            ("finetune", "train.device"),
        ]
    },
}


def _bad_value(schema: str, key: str, field: Field):
    if field.check is not None:
        return CHECK_BREAKERS[(schema, key)]
    if field.choices:
        return "no-such-choice"
    step = 1 if field.type is int else 0.5
    if field.ge is not None:
        return field.ge - step
    if field.gt is not None:
        return field.gt
    if field.le is not None:
        return field.le + step
    if field.lt is not None:
        return field.lt
    return None


def _click_params(path: tuple[str, ...]) -> dict:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params}


def _cases():
    cases = []
    for path, schema, options, needs in COMMANDS:
        params = _click_params(path)
        for name, spec in options.items():
            key = spec if isinstance(spec, str) else spec[0]
            field = schema_for(schema).field(key)
            bad = _bad_value(schema, key, field)
            if bad is None or field.type is bool:
                continue
            flag = max(params[name].opts, key=len)
            cases.append(pytest.param(path, schema, needs, flag, key, bad, field, id=f"{' '.join(path)} {flag}"))
    return cases


CASES = _cases()


def test_every_validated_option_is_covered():
    """The cases above are built from the commands' option maps; this pins that they reach the rules."""
    flags = {(" ".join(c.values[0]), c.values[3]) for c in CASES}
    for expected in [
        ("generate", "--top-p"),
        ("generate", "--dtype"),
        ("eval", "--limit"),
        ("eval", "--num-fewshot"),
        ("eval", "--batch-size"),
        ("eval", "--stride"),
        ("tokenize train", "--type"),
        ("tokenize encode", "--val-fraction"),
        ("tokenize encode", "--workers"),
        ("merge-lora", "--dtype"),
        ("merge-lora", "--requantize"),
        ("finetune", "--method"),
        ("quantize", "--backend"),
        ("quantize", "--bits"),
        ("prune", "--sparsity"),
        ("prune", "--pattern"),
        ("pretrain", "--lr"),
        ("tokenize stats", "--top-k"),
        ("export", "--format"),
        ("export", "--type"),
        ("export", "--bits"),
        ("export", "--max-ppl-increase"),
    ]:
        assert expected in flags
    assert len(CASES) >= 60


@pytest.mark.parametrize("path, schema, needs, flag, key, bad, field", CASES)
def test_flag_set_and_profile_agree(cli, tmp_path, path, schema, needs, flag, key, bad, field):
    rule = f"must be {field.allowed()}"
    typed = show_value(bad)

    res = cli(*path, *needs, flag, typed)
    assert (res.exit_code, res.stderr) == (2, f"Error: {flag} {typed}: {rule}\n")

    res = cli(*path, *needs, "--set", f"{key}={typed}")
    assert (res.exit_code, res.stderr) == (2, f"Error: --set {key}={typed}: {rule}\n")

    profile = tmp_path / "p.yaml"
    nested: str = f"{key.split('.')[-1]}: {typed}\n"
    for part in reversed(key.split(".")[:-1]):
        nested = f"{part}:\n" + "".join(f"  {line}\n" for line in nested.splitlines())
    profile.write_text(nested)
    res = cli(*path, *needs, "--profile", str(profile))
    assert (res.exit_code, res.stderr) == (2, f"Error: {profile}: {key} {typed}: {rule}\n")


def test_the_issue_examples_read_as_typed(cli):
    """The cases issue 12 names, each with its exact line."""
    expect = [
        (("tokenize", "train", "--type", "foo"), "--type foo: must be one of bpe, wordpiece, unigram"),
        (
            ("tokenize", "train", "--set", "train.type=foo"),
            "--set train.type=foo: must be one of bpe, wordpiece, unigram",
        ),
        (
            ("tokenize", "encode", "-t", "x", "--val-fraction", "1.5"),
            "--val-fraction 1.5: must be at least 0 and less than 1",
        ),
        (
            ("tokenize", "encode", "-t", "x", "--set", "encode.val_fraction=1.5"),
            "--set encode.val_fraction=1.5: must be at least 0 and less than 1",
        ),
        (("generate", "--top-p", "1.5"), "--top-p 1.5: must be greater than 0 and at most 1"),
        (("generate", "--num-return-sequences", "0"), "--num-return-sequences 0: must be at least 1"),
        (("generate", "--top-p=1.5"), "--top-p 1.5: must be greater than 0 and at most 1"),
        (("eval", "--limit", "0"), "--limit 0: must be a whole count of at least 1 or a fraction in (0, 1)"),
        (("eval", "--num-fewshot", "-1"), "--num-fewshot -1: must be at least 0"),
        (("generate", "--set", "topp=0.5"), "--set topp=0.5: unknown key (did you mean: top_p, stop, top_k?)"),
    ]
    for args, line in expect:
        res = cli(*args)
        assert (res.exit_code, res.stderr) == (2, f"Error: {line}\n"), args


def test_rule_between_keys_names_each_source(cli, tmp_path):
    rule = "perplexity.stride must be at most perplexity.seqlen"
    res = cli("eval", "--stride", "600", "--seqlen", "512")
    assert (res.exit_code, res.stderr) == (2, f"Error: {rule}; got --stride 600 and --seqlen 512\n")
    res = cli("eval", "--set", "perplexity.stride=4096")
    assert (res.exit_code, res.stderr) == (
        2,
        f"Error: {rule}; got --set perplexity.stride=4096 and perplexity.seqlen 2048 (default)\n",
    )
    profile = tmp_path / "p.yaml"
    profile.write_text("perplexity:\n  seqlen: 256\n")
    res = cli("eval", "--profile", str(profile), "--tasks", "perplexity", "--stride", "300")
    assert (res.exit_code, res.stderr) == (
        2,
        f"Error: {rule}; got --stride 300 and {profile}: perplexity.seqlen 256\n",
    )


def test_validation_comes_before_any_loading(cli):
    """A bad value is reported even when the model does not exist: nothing was looked up or loaded."""
    res = cli("generate", "--model", "no-such-model", "--prompt", "hi", "--top-p", "1.5")
    assert (res.exit_code, res.stderr) == (2, "Error: --top-p 1.5: must be greater than 0 and at most 1\n")
    res = cli("eval", "--model", "no-such-model", "--tasks", "hellaswag", "--limit", "-3")
    assert (res.exit_code, res.stderr) == (
        2,
        "Error: --limit -3: must be a whole count of at least 1 or a fraction in (0, 1)\n",
    )


@pytest.mark.parametrize(
    "args, key, value",
    [
        (("generate", "--dtype", "bf16"), ("dtype",), "bfloat16"),
        (("generate", "--set", "dtype=fp32"), ("dtype",), "float32"),
        (("eval", "--dtype", "fp16"), ("dtype",), "float16"),
        (("merge-lora", "--adapter", "a", "-n", "m", "--dtype", "bf16"), ("dtype",), "bfloat16"),
        (("merge-lora", "--adapter", "a", "-n", "m", "--dtype", "float16"), ("dtype",), "float16"),
        (("merge-lora", "--adapter", "a", "-n", "m"), ("dtype",), "float32"),
        (("pretrain", "--data", "d", "--name", "n", "--dtype", "bf16"), ("train", "dtype"), "bfloat16"),
        (
            ("finetune", "-n", "n", "--dtype", "fp32", "--set", "qlora.compute_dtype=fp16"),
            ("qlora", "compute_dtype"),
            "float16",
        ),
        (("finetune", "-n", "n", "--dtype", "fp32"), ("train", "dtype"), "float32"),
        (("quantize", "--name", "n", "--set", "bnb.compute_dtype=bf16"), ("bnb", "compute_dtype"), "bfloat16"),
    ],
)
def test_both_dtype_spellings_resolve_to_the_long_form(cli, args, key, value):
    res = cli(*args, "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    config = json.loads(res.stdout)
    for part in key:
        config = config[part]
    assert config == value


def test_choice_options_complete_and_document_the_schema_choices():
    params = _click_params(("tokenize", "train"))
    ctx = typer.main.get_command(app).make_context("llmctl", ["tokenize", "train"], resilient_parsing=True)
    assert [c.value for c in params["type_"].shell_complete(ctx, "")] == ["bpe", "wordpiece", "unigram"]
    assert [c.value for c in params["type_"].shell_complete(ctx, "u")] == ["unigram"]
    assert "one of bpe, wordpiece, unigram" in params["type_"].help
    dtype = _click_params(("merge-lora",))["dtype"]
    assert [c.value for c in dtype.shell_complete(ctx, "")] == [
        "float32",
        "bfloat16",
        "float16",
        "fp32",
        "bf16",
        "fp16",
    ]
    assert dtype.help == (
        "Dtype of the saved merged weights (one of float32, bfloat16, float16 (or fp32, bf16, fp16); default float32)."
    )
