"""The opt-in warm worker (`llmctl worker`, issue 27): real worker processes driven by real `llmctl` clients.

A command run through the worker must read as the same command run in its own process: output, exit code,
working folder, environment, ignored signals; Ctrl-C and SIGTERM reach it; a client that dies ends it; an
environment that differs in an import-time variable, or changed code, makes the command run in its own process.

Examples:
    pytest tests/test_worker.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LLMCTL = str(Path(sys.executable).parent / "llmctl")
START_S = 300  # preloading torch/transformers/peft: ~6 s idle, much more on a loaded 2-core machine


def _env(home: Path, runtime: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMCTL_WORKER"}
    env.update(LLMCTL_HOME=str(home), XDG_RUNTIME_DIR=str(runtime), **extra)
    return env


def _run(env: dict, *args: str, cwd: Path | None = None, timeout: float = START_S) -> subprocess.CompletedProcess:
    return subprocess.run([LLMCTL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _served(env: dict) -> int:
    res = _run(env, "worker", "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout).get("served", -1)


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_llama_dir):
    """One worker for this module's tests: (env, home); the tiny LLaMA registered as 'tiny'."""
    base = tmp_path_factory.mktemp("worker")
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    env = _env(base / "home", runtime)
    res = _run(env, "worker", "start", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["already"] is False and info["running"] == 0
    res = _run(env, "models", "import", str(tiny_llama_dir), "--name", "tiny", "--link")
    assert res.returncode == 0, res.stderr
    yield env, base / "home"
    _run(env, "worker", "stop")
    try:
        os.kill(info["pid"], signal.SIGKILL)  # only if stop did not end it
    except ProcessLookupError:
        pass


def test_a_command_runs_in_the_worker_with_the_clients_output_and_exit_code(worker, tiny_llama_dir, tmp_path):
    env, home = worker
    before = _served(env)
    link = tmp_path / "sub" / "model"
    shutil.copytree(tiny_llama_dir, link)
    res = _run(env, "models", "import", "sub/model", "--name", "tiny2", "--link", cwd=tmp_path)  # a relative path
    assert res.returncode == 0, res.stderr
    res = _run(env, "models", "list", "--json")
    assert res.returncode == 0 and [r["name"] for r in json.loads(res.stdout)] == ["tiny", "tiny2"]
    assert json.loads(_run(env, "models", "show", "tiny2", "--json").stdout)["path"] == str(link)
    assert _served(env) == before + 3
    assert (home / "registry.db").exists()  # the client's LLMCTL_HOME, not another


def test_errors_read_exactly_as_in_a_fresh_process(worker):
    env, _ = worker
    warm = _run(env, "models", "show", "nosuch")
    fresh = _run({**env, "LLMCTL_WORKER": "0"}, "models", "show", "nosuch")
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 1 and warm.stderr.startswith("Error: ")
    usage = _run(env, "nosuch")
    assert usage.returncode == 2 and usage.stderr == "Error: No such command 'nosuch' (see `llmctl --help`)\n"


def test_generate_through_the_worker_gives_the_fresh_process_text(worker):
    env, _ = worker
    args = ("generate", "--model", "tiny", "--prompt", "hello", "--max-new-tokens", "6", "--backend", "hf")
    warm = _run(env, *args)
    fresh = _run({**env, "LLMCTL_WORKER": "0"}, *args)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == fresh.stdout and warm.stdout.strip()


def test_an_import_time_variable_that_differs_runs_the_command_in_its_own_process(worker, tmp_path):
    env, _ = worker
    before = _served(env)
    res = _run({**env, "HF_HOME": str(tmp_path / "hf")}, "models", "list", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)
    res = _run({**env, "LLMCTL_WORKER": "off"}, "models", "list", "--json")
    assert res.returncode == 0
    assert _served(env) == before  # neither ran in the worker


def test_commands_run_side_by_side(worker):
    env, _ = worker
    procs = [
        subprocess.Popen([LLMCTL, "models", "list", "--json"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=START_S)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert all(json.loads(o)[0]["name"] == "tiny" for o in outs)


def _serve(env: dict) -> subprocess.Popen:
    """`llmctl serve` of the tiny model on a free port, through the worker; returns once it listens."""
    proc = subprocess.Popen([LLMCTL, "serve", "--model", "tiny", "--port", "0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + START_S
    for line in proc.stderr:
        if "listening on" in line:
            url = line.split("listening on ", 1)[1].split()[0]
            break
        assert time.monotonic() < deadline
    else:
        raise AssertionError(f"serve ended before listening (code {proc.wait()})")
    while True:  # answering HTTP: uvicorn runs and handles the signals (before that a fresh process dies too)
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=5).read()
            return proc
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_reach_the_command(worker, sig):
    env, _ = worker
    proc = _serve(env)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0  # serve's own graceful stop, as without the worker
    proc.stderr.close()


def test_a_client_that_dies_ends_its_command(worker):
    env, _ = worker
    proc = _serve(env)
    proc.kill()  # SIGKILL: the client cannot pass anything on; the worker's keeper hangs the command up
    proc.wait()
    proc.stderr.close()
    deadline = time.monotonic() + 30
    while json.loads(_run(env, "worker", "status", "--json").stdout)["running"]:
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.5)


def test_a_command_killed_by_a_signal_ends_its_client_the_same_way(worker, tmp_path):
    env, _ = worker
    rows = [{"instruction": f"Say {w}.", "output": f"The {w} is here."} for w in ("fox", "dog", "cat", "owl") * 4]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("finetune", "--model", "tiny", "--data", str(data), "--max-steps", "3", "--batch-size", "2",
            "--seq-len", "64", "--eval-every", "0", "--name", "killed")  # fmt: skip
    before = _served(env)
    res = _run({**env, "LLMCTL_KILL_AT_STEP": "1"}, *args)  # the training loop SIGKILLs its own process at step 1
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert _served(env) == before + 1


def test_a_second_start_finds_the_running_worker(worker):
    env, _ = worker
    res = _run(env, "worker", "start")
    assert res.returncode == 0 and res.stderr.startswith("already running: worker ")


def test_changed_code_retires_the_worker_and_the_command_runs_here(tmp_path, tiny_llama_dir):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = _env(tmp_path / "home", runtime)
    assert _run(env, "worker", "start").returncode == 0
    module = Path(__import__("llmctl.errors").errors.__file__)
    info = module.stat()
    try:
        os.utime(module, ns=(info.st_atime_ns, info.st_mtime_ns + 1))  # as an edit or upgrade would
        res = _run(env, "models", "list", "--json")
        assert res.returncode == 0 and json.loads(res.stdout) == []
        assert "the worker retired (llmctl or its packages changed" in res.stderr
        deadline = time.monotonic() + 10
        while json.loads(_run(env, "worker", "status", "--json").stdout)["running"] is not False:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.utime(module, ns=(info.st_atime_ns, info.st_mtime_ns))
        _run(env, "worker", "stop")


def test_stop_ends_the_worker_and_removes_its_socket(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = _env(tmp_path / "home", runtime)
    assert _run(env, "worker", "start").returncode == 0
    assert list((runtime / "llmctl").glob("*.sock"))
    res = _run(env, "worker", "stop")
    assert res.returncode == 0 and res.stderr.startswith("stopped worker ")
    assert not list((runtime / "llmctl").glob("*.sock"))
    res = _run(env, "worker", "status", "--json")
    assert json.loads(res.stdout) == {"running": False}


def test_status_and_stop_without_a_worker(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    res = cli("worker", "status")
    assert res.exit_code == 0 and "no worker is running" in res.stdout
    res = cli("worker", "status", "--json")
    assert json.loads(res.stdout) == {"running": False}
    res = cli("worker", "stop")
    assert res.exit_code == 0 and "no worker was running" in res.stderr


def test_bad_idle_timeout_is_a_usage_error(cli):
    res = cli("worker", "start", "--idle-timeout", "-1")
    assert res.exit_code == 2
    assert res.stderr == (
        "Error: Invalid value for '--idle-timeout': Input should be greater than or equal to 0 "
        "(see `llmctl worker start --help`)\n"
    )


def test_a_folder_others_can_enter_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "llmctl").mkdir(mode=0o777)
    os.chmod(tmp_path / "llmctl", 0o777)
    res = cli("worker", "start")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {tmp_path / 'llmctl'} is not a private folder of this user")
    from llmctl.worker.client import forward

    assert forward(["models", "list"]) is None  # clients never use a socket there: they run the command here
