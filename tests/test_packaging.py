"""The built wheel is llmctl as users install it: every package, the profiles and the eval task files inside,
and the installed copy runs (`--help`, `profiles list`, a tiny `generate`) with the repository out of sight.

Examples:
    pytest tests/test_packaging.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: build with this environment's setuptools (offline, no fresh build environment)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(out)],
        capture_output=True,
        text=True,
        cwd=out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "BuildBackendWarning" not in res.stderr and "is absent from the `packages`" not in res.stderr
    (path,) = out.glob("llmctl-*.whl")
    return path


def _expected_files() -> set[str]:
    """What must ship: every module and data file of llmctl/, commands/ and profiles/ (under their installed names)."""
    files = set()
    for base, name in (
        (ROOT / "llmctl", "llmctl"),
        (ROOT / "commands", "llmctl/cli"),
        (ROOT / "profiles", "llmctl/builtin_profiles"),
    ):
        for p in base.rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".txt", ".typed", ".html"):
                files.add(f"{name}/{p.relative_to(base).as_posix()}")
    return files


def test_wheel_holds_every_package_profile_and_task_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _expected_files() - names == set()
    assert any(n.startswith("llmctl/builtin_profiles/merge-lora/") for n in names)
    assert "llmctl/evaluate/task_files/hellaswag.yaml" in names


def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path, tiny_llama_dir):
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the wheel's copy first on the path; the dependencies come from this environment
    env = {**os.environ, "PYTHONPATH": str(target), "LLMCTL_HOME": str(tmp_path / "home")}

    def llmctl(*args):
        return subprocess.run(
            [sys.executable, "-m", "llmctl", *args], capture_output=True, text=True, cwd=tmp_path, env=env
        )

    where = subprocess.run(
        [sys.executable, "-c", "import llmctl, llmctl.cli.main; print(llmctl.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr
    assert llmctl("--help").returncode == 0
    profiles = llmctl("profiles", "list", "--json")
    assert profiles.returncode == 0, profiles.stderr
    listed = {f"{p['command']}/{p['name']}" for p in json.loads(profiles.stdout)}
    assert {"generate/default", "merge-lora/default", "finetune/dpo"} <= listed
    gen = llmctl("generate", "--model", str(tiny_llama_dir), "--prompt", "hi", "--max-new-tokens", "2", "--json")
    assert gen.returncode == 0, gen.stderr[-2000:]
    (result,) = json.loads(gen.stdout)["results"]
    assert result["prompt"] == "hi" and isinstance(result["output"], str)
