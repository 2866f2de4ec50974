"""Generated docs: `docs/commands/<cmd>.md` below the marker and `profiles/<cmd>/default.yaml` are exactly what
`make docs` writes from the click commands (the source of --help) and the schemas."""

from __future__ import annotations

import pytest

from llmctl.cli import _docs
from llmctl.config.profiles import profile_commands

EXPECTED = _docs.expected_files()


@pytest.mark.parametrize("path", sorted(EXPECTED), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_generated_file_is_current(path):
    assert path.exists(), f"{path} is missing: run `make docs`"
    assert path.read_text(encoding="utf-8") == EXPECTED[path], f"{path} is stale: run `make docs`"


def test_every_command_has_a_page_with_a_hand_written_part():
    names = set(_docs.root_command().commands)
    assert names >= {"eval", "export", "finetune", "generate", "merge-lora", "models", "pretrain", "profiles"}
    for name in names:
        page = _docs.ROOT / "docs" / "commands" / f"{name}.md"
        hand, marker, generated = page.read_text(encoding="utf-8").partition(_docs.MARKER)
        assert marker, f"{page} has no generated-part marker"
        assert hand.startswith(f"# llmctl {name}\n") and "```sh" in hand, f"{page}: title and invocations first"
        assert f"### `llmctl {name}" in generated


def test_every_profile_command_has_a_generated_default_profile():
    for command in profile_commands():
        assert _docs.ROOT / "profiles" / command / "default.yaml" in EXPECTED


def test_pages_show_the_help_that_help_prints(cli):
    """The same text: each option's --help line comes from the click command the page was written from."""
    page = (_docs.ROOT / "docs" / "commands" / "quantize.md").read_text(encoding="utf-8")
    assert "| `--seed` | int | 0 | `calib.seed` | Seed for picking windows (default 0). |" in page
    res = cli("quantize", "--help")
    assert res.exit_code == 0
    assert "Seed for picking windows (default 0)." in " ".join(res.stdout.replace("│", " ").split())


def test_a_stale_page_is_found_and_rewritten_below_the_marker_only(tmp_path):
    name, command = "merge-lora", _docs.root_command().commands["merge-lora"]
    current = "# llmctl merge-lora\n\nHand text.\n\n```sh\nllmctl merge-lora --adapter a --name b\n```\n\n"
    stale = current + _docs.MARKER + "\n\nold reference\n"
    text = _docs.page_text(name, command, stale)
    assert text.startswith(current + _docs.MARKER + "\n") and "old reference" not in text
    assert "| `--dtype` |" in text and "`qlora_base`" in text


def test_check_mode_reports_stale_files(monkeypatch, capsys):
    path = next(iter(EXPECTED))
    monkeypatch.setattr(_docs, "stale_files", lambda root=_docs.ROOT: [path])
    assert _docs.main(["--check"]) == 1
    assert "run `make docs`" in capsys.readouterr().out
