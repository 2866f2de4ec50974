"""`models import` never follows a link out of its source and caps its copy; `models remove --delete-files` keeps
derived models working; `models doctor --fix` changes only what it found, keeps every metric and `--link` entry,
and never brings back a model the user removed (issue 24)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from llmctl.models.importer import DEFAULT_MAX_SIZE, parse_size

_LINK_HINT = "replace the link with the files it points to, or pass --link to register the folder in place"


@pytest.fixture
def src(tmp_path, tiny_llama_dir) -> Path:
    """A writable copy of the tiny model, to plant links in."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "downloaded"))


def _registry_is_empty(cli, home: Path) -> None:
    assert json.loads(cli("models", "list", "--json").stdout) == []
    assert list((home / "models").iterdir()) == [], "nothing was copied, not even a temp folder"


def _marker(home: Path, name: str) -> dict:
    return json.loads((home / "models" / name / "llmctl-entry.json").read_text())


# ---- import: links and size ------------------------------------------------------------------------------------


def test_a_link_out_of_the_folder_is_refused_before_copying(cli, src, tmp_path, llmctl_home):
    home_like = tmp_path / "user-home"
    home_like.mkdir()
    (home_like / "secret.txt").write_text("private")
    (src / "docs").symlink_to(home_like)
    r = cli("models", "import", src, "--name", "m")
    assert r.exit_code == 1
    assert r.stderr == f"Error: {src / 'docs'} is a link to {home_like}, outside {src}; {_LINK_HINT}\n"
    _registry_is_empty(cli, llmctl_home)
    (src / "docs").unlink()
    (src / "notes.txt").symlink_to(home_like / "secret.txt")  # a file link out is refused too
    r = cli("models", "import", src, "--name", "m")
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {src / 'notes.txt'} is a link to {home_like}/secret.txt")
    assert cli("models", "import", src, "--name", "m", "--link").exit_code == 0, "--link copies nothing"


def test_dangling_and_looping_links_are_refused(cli, src, llmctl_home):
    (src / "gone").symlink_to(src / "no-such-file")
    r = cli("models", "import", src, "--name", "m")
    assert r.exit_code == 1
    assert (
        r.stderr == f"Error: {src / 'gone'} is a link to {src / 'no-such-file'}, which does not exist; {_LINK_HINT}\n"
    )
    (src / "gone").unlink()
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..")  # inside the folder, but a folder that holds the link: endless
    r = cli("models", "import", src, "--name", "m")
    assert r.exit_code == 1
    assert (
        r.stderr == f"Error: {src / 'sub' / 'up'} is a link to .., a folder that holds it (a link loop); {_LINK_HINT}\n"
    )
    (src / "sub" / "up").unlink()
    (src / "self").symlink_to("self")
    r = cli("models", "import", src, "--name", "m")
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {src / 'self'} is a link to self, which loops")
    _registry_is_empty(cli, llmctl_home)


def test_links_inside_the_folder_are_copied_as_their_content(cli, src, llmctl_home):
    (src / "extra").mkdir()
    (src / "extra" / "readme.md").write_text("inside")
    (src / "alias").symlink_to("extra")
    (src / "tokenizer-copy.json").symlink_to(src / "tokenizer.json")
    r = cli("models", "import", src, "--name", "m", "--json")
    assert r.exit_code == 0, r.stderr
    folder = Path(json.loads(r.stdout)["path"])
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    assert links == [], "the entry holds plain files only"
    assert (folder / "alias" / "readme.md").read_text() == "inside"
    assert (folder / "tokenizer-copy.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert cli("models", "doctor").exit_code == 0


def test_max_size_is_checked_before_copying(cli, src, llmctl_home, monkeypatch):
    import llmctl.models.importer as importer

    def no_copy(*args, **kwargs):
        raise AssertionError("copied before the size check")

    with monkeypatch.context() as patch:
        patch.setattr(importer.shutil, "copy2", no_copy)
        r = cli("models", "import", src, "--name", "m", "--max-size", "100K")
        assert r.exit_code == 1
        assert r.stderr.startswith(f"Error: {src} holds ")
        assert "at least), more than --max-size 100.0 KiB; raise the cap, e.g. --max-size 500G, or pass --link" in (
            r.stderr
        )
        _registry_is_empty(cli, llmctl_home)
        assert cli("models", "import", src, "--name", "m", "--max-size", "100K", "--link").exit_code == 0
    r = cli("models", "import", src, "--name", "m2", "--max-size", "1M")
    assert r.exit_code == 0, r.stderr
    assert Path(json.loads(cli("models", "show", "m2", "--json").stdout)["path"]).parent == llmctl_home / "models"


@pytest.mark.parametrize("bad", ["12X", "0", "-3G", "100B", ""])
def test_a_bad_max_size_is_a_usage_error(cli, src, bad):
    r = cli("models", "import", src, "--name", "m", "--max-size", bad)
    assert r.exit_code == 2
    assert r.stderr == (
        f"Error: --max-size {bad}: not a size above 0; give a number of GiB (100) or a number with K, M, G or T "
        "(500M, 1.5T)\n"
    )


def test_size_spellings():
    assert parse_size("100") == 100 * 1024**3
    assert parse_size("500M") == parse_size("500MB") == parse_size("500MiB") == 500 * 1024**2
    assert parse_size("1.5t") == int(1.5 * 1024**4)
    assert parse_size("64K") == 64 * 1024


def test_the_command_default_is_the_importers():
    from llmctl.cli.models import import_

    assert inspect.signature(import_).parameters["max_size"].default == DEFAULT_MAX_SIZE


# ---- remove --delete-files of a model others derive from --------------------------------------------------------


def _adapter(base_dir: Path, dest: Path, base_name: str) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_name
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def test_deleting_a_parent_needs_force_and_children_keep_working(cli, src, llmctl_home):
    assert cli("models", "import", src, "--name", "base").exit_code == 0
    r = cli("prune", "--model", "base", "--method", "magnitude", "--sparsity", "0.5", "--name", "child")
    assert r.exit_code == 0, r.stderr
    base_dir, child_dir = llmctl_home / "models" / "base", llmctl_home / "models" / "child"
    assert base_dir not in child_dir.resolve().parents, "each entry has its own folder"
    r = cli("models", "remove", "base", "--delete-files")
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: child was derived from 'base'; pass --force to delete the files of base anyway (each derived "
        "model keeps its own folder), or remove those first\n"
    )
    assert (base_dir / "model.safetensors").is_file() and cli("models", "show", "base").exit_code == 0
    r = cli("models", "remove", "base", "--delete-files", "--force", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["files_deleted"] is True and not base_dir.exists()
    shown = cli("models", "show", "child", "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["parents"] == ["base"]
    r = cli("generate", "--model", "child", "--prompt", "Hi", "--max-new-tokens", "2", "--greedy")
    assert r.exit_code == 0, r.stderr


def test_an_adapter_child_is_named_as_needing_its_base(cli, src, tmp_path, llmctl_home):
    assert cli("models", "import", src, "--name", "base").exit_code == 0
    lora = _adapter(src, tmp_path / "lora", "base")
    assert cli("models", "import", lora, "--name", "lora").exit_code == 0
    r = cli("models", "remove", "base", "--delete-files")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: lora (an adapter: it loads on top of base) was derived from 'base'; ")
    assert cli("models", "remove", "base").exit_code == 0, "keeping the files needs no --force"


def test_files_another_entry_uses_are_never_deleted(cli, src, llmctl_home):
    assert cli("models", "import", src, "--name", "base").exit_code == 0
    base_dir = llmctl_home / "models" / "base"
    assert cli("models", "import", base_dir, "--name", "alias", "--link").exit_code == 0
    r = cli("models", "remove", "base", "--delete-files", "--force")
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: alias uses files in {base_dir}, the folder of 'base': deleting it would break them; "
        "remove them first, or keep the files: `llmctl models remove base`\n"
    )
    assert (base_dir / "model.safetensors").is_file()
    assert cli("models", "show", "base").exit_code == 0 and cli("models", "show", "alias").exit_code == 0


# ---- doctor --fix: only what it found, every metric, every --link entry, no removed model back ------------------


def test_fix_with_only_warnings_changes_nothing(cli, src, tmp_path, llmctl_home):
    assert cli("models", "import", src, "--name", "base").exit_code == 0
    assert cli("models", "import", _adapter(src, tmp_path / "lora", "base"), "--name", "lora").exit_code == 0
    assert cli("models", "remove", "base").exit_code == 0  # lora's parent is gone: a warning
    db = llmctl_home / "registry.db"
    before = db.read_bytes()
    r = cli("models", "doctor", "--fix", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(p["where"], p["severity"], p["fixed"]) for p in report["problems"]] == [("lora", "warning", False)]
    assert report["backup"] is None and report["kept"] == [str(llmctl_home / "models" / "base")]
    assert db.read_bytes() == before and not list(llmctl_home.glob("registry.db.bak-*"))
    assert [e["name"] for e in json.loads(cli("models", "list", "--json").stdout)] == ["lora"]


def test_a_removed_model_is_never_registered_again(cli, src, llmctl_home):
    assert cli("models", "import", src, "--name", "a").exit_code == 0
    assert cli("models", "import", src, "--name", "b").exit_code == 0
    r = cli("models", "remove", "a")
    assert r.exit_code == 0 and _marker(llmctl_home, "a")["removed"]
    report = json.loads(cli("models", "doctor", "--json").stdout)
    assert report["ok"] and report["problems"] == [] and report["kept"] == [str(llmctl_home / "models" / "a")]
    assert cli("models", "doctor", "--fix").exit_code == 0
    (llmctl_home / "registry.db").write_bytes(b"not a database" * 100)  # even a rebuild leaves it out
    r = cli("models", "doctor", "--fix", "--json")
    assert r.exit_code == 0, r.stderr
    assert [e["name"] for e in json.loads(cli("models", "list", "--json").stdout)] == ["b"]
    r = cli("models", "import", llmctl_home / "models" / "a", "--name", "a2")  # the kept files import again
    assert r.exit_code == 0, r.stderr
    assert "removed" not in _marker(llmctl_home, "a2")
    assert cli("models", "doctor", "--fix").exit_code == 0
    assert sorted(e["name"] for e in json.loads(cli("models", "list", "--json").stdout)) == ["a2", "b"]


def test_fix_merges_metrics_of_the_index_and_the_marker(cli, src, llmctl_home):
    from llmctl.models.registry import Registry

    assert cli("models", "import", src, "--name", "a").exit_code == 0
    Registry().update_metrics("a", {"both.acc": 0.5})
    con = sqlite3.connect(llmctl_home / "registry.db")  # the index alone learns one (e.g. an older llmctl's eval)
    con.execute("""UPDATE models SET metrics = '{"both.acc": 0.5, "index.ppl": 12.0}' WHERE name = 'a'""")
    con.commit()
    con.close()
    marker_path = llmctl_home / "models" / "a" / "llmctl-entry.json"
    marker = json.loads(marker_path.read_text())
    marker["entry"]["metrics"]["marker.f1"] = 0.25  # and the marker alone another
    marker_path.write_text(json.dumps(marker))
    r = cli("models", "doctor", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["problems"][0]["problem"] == "its marker holds metrics the index lacks (marker.f1)"
    r = cli("models", "doctor", "--fix", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["backup"], "the index is backed up before doctor changes it"
    every = {"both.acc": 0.5, "index.ppl": 12.0, "marker.f1": 0.25}
    assert json.loads(cli("models", "show", "a", "--json").stdout)["metrics"] == every
    assert _marker(llmctl_home, "a")["entry"]["metrics"] == every
    assert json.loads(cli("models", "doctor", "--json").stdout)["problems"] == []


def test_a_damaged_row_keeps_link_entries_and_index_only_metrics(cli, src, tmp_path, llmctl_home):
    assert cli("models", "import", src, "--name", "a").exit_code == 0
    assert cli("models", "import", src, "--name", "b", "--link").exit_code == 0
    assert cli("models", "import", src, "--name", "c", "--link").exit_code == 0
    con = sqlite3.connect(llmctl_home / "registry.db")
    con.execute("""UPDATE models SET metrics = '{"index.ppl": 9.5}' WHERE name IN ('a', 'b')""")
    con.execute("UPDATE models SET meta = '{not json' WHERE name = 'c'")
    con.commit()
    con.close()
    marker_path = llmctl_home / "models" / "a" / "llmctl-entry.json"
    marker = json.loads(marker_path.read_text())
    marker["entry"]["metrics"] = {"marker.f1": 0.25}  # what only the marker still knows
    marker_path.write_text(json.dumps(marker))
    assert cli("models", "list").exit_code == 1
    r = cli("models", "doctor", "--fix", "--json")
    assert r.exit_code == 0, r.stderr
    problems = {(p["where"], p["problem"]) for p in json.loads(r.stdout)["problems"]}
    assert ("c", "its meta cannot be read from the index") in problems
    assert ("b", f"registered in place (--link) at {src}: only the index records it") in problems
    entries = {e["name"]: e for e in json.loads(cli("models", "list", "--json").stdout)}
    assert sorted(entries) == ["a", "b", "c"]
    assert entries["a"]["metrics"] == {"index.ppl": 9.5, "marker.f1": 0.25}
    assert entries["b"]["metrics"] == {"index.ppl": 9.5}
    assert not entries["b"]["managed"] and os.path.samefile(entries["c"]["path"], src)
    assert _marker(llmctl_home, "a")["entry"]["metrics"] == entries["a"]["metrics"], "the next rebuild keeps them"


def test_a_lost_row_comes_back_without_touching_the_rest(cli, src, llmctl_home):
    from llmctl.models.registry import Registry

    assert cli("models", "import", src, "--name", "a").exit_code == 0
    assert cli("models", "import", src, "--name", "b", "--link").exit_code == 0
    Registry().update_metrics("a", {"x.acc": 0.1})
    Registry().update_metrics("b", {"y.acc": 0.2})
    con = sqlite3.connect(llmctl_home / "registry.db")
    con.execute("DELETE FROM models WHERE name = 'a'")
    con.commit()
    con.close()
    r = cli("models", "doctor", "--fix", "--json")
    assert r.exit_code == 0, r.stderr
    assert [p["problem"] for p in json.loads(r.stdout)["problems"]] == ["a model folder that the index does not list"]
    entries = {e["name"]: e for e in json.loads(cli("models", "list", "--json").stdout)}
    assert entries["a"]["metrics"] == {"x.acc": 0.1} and entries["b"]["metrics"] == {"y.acc": 0.2}
    assert os.path.samefile(entries["b"]["path"], src)


def test_a_hugging_face_cache_snapshot_imports_its_blobs_as_files(cli, tiny_llama_dir, tmp_path, llmctl_home):
    """snapshots/REV/x -> ../../blobs/HASH is how a downloaded model lies on disk: copied, not refused."""
    import os

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in tiny_llama_dir.iterdir() if p.is_file())):
        (repo / "blobs" / f"h{i}").write_bytes(f.read_bytes())
        os.symlink(f"../../blobs/h{i}", snap / f.name)
    r = cli("models", "import", snap, "--name", "from-cache")
    assert r.exit_code == 0, r.stderr
    copied = llmctl_home / "models" / "from-cache" / "config.json"
    assert copied.is_file() and not copied.is_symlink()
    os.symlink(tmp_path, snap / "escape")  # a folder link out of the cache is still refused
    r = cli("models", "import", snap, "--name", "from-cache-2")
    assert r.exit_code == 1 and "outside" in r.stderr
