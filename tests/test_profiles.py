"""Profiles: every shipped file validates; strict errors; precedence; --set parsing; CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.config.profiles import (
    builtin_root,
    list_profiles,
    load_profile_file,
    parse_sets,
    resolve_config,
    schema_for,
)
from llmctl.errors import LlmctlError, UsageError

PROFILE_FILES = sorted(builtin_root().rglob("*.yaml"))


def test_profiles_are_shipped():
    assert PROFILE_FILES, "no built-in profiles found"


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_profile_file_validates_and_is_documented(path: Path):
    command = path.parent.name
    config = load_profile_file(path, schema_for(command))
    assert isinstance(config, dict)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(f"# llmctl {command}"), "first line must give the exact command that uses it"
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"key without a `# meaning (type, default)` comment: {line!r}"


def test_unknown_key_and_wrong_type_are_reported_together(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_new_tokens: lots\ntopp: 0.5\ntemperature: -1\n")
    with pytest.raises(UsageError) as info:
        load_profile_file(bad, schema_for("generate"))
    assert info.value.message == (
        f"{bad}: max_new_tokens lots: must be int, not text; "
        "topp 0.5: unknown key (did you mean: top_p, stop, top_k?); "
        "temperature -1: must be at least 0"
    )


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("max_new_tokens: 5\n  top_k: [1,\n")
    with pytest.raises(LlmctlError, match=r"broken.yaml is not valid YAML at line"):
        load_profile_file(bad, schema_for("generate"))


def test_precedence_defaults_profile_set_explicit(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("top_k: 7\ntemperature: 0.5\nmax_new_tokens: 11\n")
    cfg = resolve_config("generate", str(prof), ["temperature=0.6", "max_new_tokens=12"], {"max_new_tokens": 13})
    assert cfg["top_k"] == 7  # from the profile
    assert cfg["temperature"] == 0.6  # --set beats the profile
    assert cfg["max_new_tokens"] == 13  # explicit option beats --set
    assert cfg["top_p"] == 1.0  # built-in default


def test_parse_sets_types_and_errors():
    assert parse_sets(["a.b=32", "c=3e-4", "d=true", "e=x,y", "f=2:4"]) == {
        "a": {"b": 32},
        "c": 3e-4,
        "d": True,
        "e": "x,y",
        "f": "2:4",
    }
    with pytest.raises(UsageError, match="--set expects key=value, got 'lr'"):
        parse_sets(["lr"])


def test_yaml_numbers_are_yaml_1_2(tmp_path):
    """`3e-4` is a float and `2:4` text in profile files too (YAML 1.1 reads a string and the number 124)."""
    prof = tmp_path / "p.yaml"
    prof.write_text("train:\n  lr: 3e-4\n")
    assert resolve_config("finetune", str(prof))["train"]["lr"] == 3e-4
    prof.write_text("pattern: 2:4\n")
    assert resolve_config("prune", str(prof))["pattern"] == "2:4"


def test_dtype_spellings_are_normalised(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("dtype: bf16\n")
    assert resolve_config("merge-lora", str(prof))["dtype"] == "bfloat16"
    assert resolve_config("generate", None, ["dtype=fp16"])["dtype"] == "float16"
    assert resolve_config("pretrain", None, None, {"train.dtype": "fp32"})["train"]["dtype"] == "float32"
    assert resolve_config("merge-lora")["dtype"] == "float32"


def test_user_profiles_shadow_builtins(llmctl_home):
    user = llmctl_home / "profiles" / "generate"
    user.mkdir(parents=True)
    (user / "creative.yaml").write_text("# llmctl generate --profile creative\n# mine\ntop_k: 3  # k (int, 50)\n")
    found = {p.name: p for p in list_profiles("generate")}
    assert found["creative"].source == "user"
    assert resolve_config("generate", "creative")["top_k"] == 3


def test_cli_profiles_list_and_show(cli):
    res = cli("profiles", "list", "--json")
    assert res.exit_code == 0
    assert any(p["command"] == "generate" and p["name"] == "creative" for p in __import__("json").loads(res.stdout))
    res = cli("profiles", "show", "generate/creative", "--defaults")
    assert res.exit_code == 0
    assert "temperature" in res.stdout and "max_new_tokens" in res.stdout


def test_cli_profiles_show_unknown(cli):
    res = cli("profiles", "show", "generate/creativ")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: no profile 'creativ' for `generate` (did you mean: creative?)")


def test_cli_bad_profile_errors(cli, tmp_path, tiny_model):
    bad = tmp_path / "bad.yaml"
    bad.write_text("top_p: high\nwhatever: 1\n")
    res = cli("generate", "--model", tiny_model, "--prompt", "hi", "--profile", str(bad))
    assert res.exit_code == 2
    assert res.stderr.startswith(
        f"Error: {bad}: top_p high: must be float, not text; whatever 1: unknown key (known here: "
    )
    assert res.stderr.count("\n") == 1  # one line


@pytest.mark.parametrize(
    "content, first_line",
    [
        (
            b"top_k: 5\n\xe9t\xe9: 1\n",
            "Error: profile {path} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8",
        ),
        (
            b"\x00\x01\x02binary",
            "Error: profile {path} looks binary (it contains NUL bytes); a profile is a YAML text "
            "file; see `llmctl profiles show COMMAND/NAME`",
        ),
    ],
)
def test_cli_unreadable_profile_one_line(cli, tmp_path, content, first_line):
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    res = cli("generate", "--prompt", "hi", "--profile", str(path))
    assert res.exit_code == 1
    assert res.stderr == first_line.format(path=path) + "\n"


def test_cli_unreadable_profile_via_profiles_show(cli, llmctl_home):
    user = llmctl_home / "profiles" / "generate"
    user.mkdir(parents=True)
    (user / "latin.yaml").write_bytes(b"# llmctl generate\n\xe9: 1\n")
    res = cli("profiles", "show", "generate/latin")
    assert res.exit_code == 1
    assert (
        res.stderr
        == f"Error: profile {user / 'latin.yaml'} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8\n"
    )


def test_cli_profiles_list_unknown_command_is_refused(cli):
    res = cli("profiles", "list", "--command", "no-such-command")
    assert res.exit_code == 2
    assert res.stderr == (
        "Error: no command 'no-such-command' takes profiles; commands with profiles: eval, export, finetune, "
        "generate, merge-lora, pretrain, prune, quantize, serve, tokenize\n"
    )


def test_cli_several_pairs_after_one_set_say_how(cli):
    res = cli("pretrain", "--data", "d", "--name", "n", "--set", "model.hidden_size=64", "model.num_layers=2")
    assert res.exit_code == 2
    assert res.stderr == (
        "Error: Got unexpected extra argument(s) (model.num_layers=2); give each key its own --set: "
        "--set a=1 --set b=2 (see `llmctl pretrain --help`)\n"
    )


def test_cli_set_without_equals_is_usage_error(cli, tiny_model):
    res = cli("generate", "--model", tiny_model, "--prompt", "hi", "--set", "top_k")
    assert res.exit_code == 2
    assert (
        res.stderr
        == "Error: --set expects key=value, got 'top_k'; e.g. --set train.lr=3e-4; repeat --set for each key\n"
    )


def test_cli_dry_run_prints_resolved_config(cli):
    res = cli("generate", "--prompt", "hi", "--profile", "creative", "--set", "top_k=5", "--dry-run")
    assert res.exit_code == 0
    assert "top_k: 5" in res.stdout and "temperature: 0.8" in res.stdout
