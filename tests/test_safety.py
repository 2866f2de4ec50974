"""Nothing in a model folder is ever executed: pickle payloads in every format's weight files, custom code.

Each test plants a file that would create `PWNED` when unpickled (or imported) and loads the folder the way a
user would (by path and by registry name); the payload must not run and the error must name the file or folder.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs `open(target, 'w')`: proof that code from the file ran."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def plant(path: Path, target: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": _Payload(target)}, protocol=2))
    return path


@pytest.fixture
def pwned(tmp_path) -> Path:
    return tmp_path / "PWNED"


def _generate(cli, model) -> object:
    return cli("generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "2")


def test_hf_folder_with_a_pickled_bin_file(cli, tiny_llama_dir, tmp_path, pwned):
    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    plant(folder / "pytorch_model.bin", pwned)
    r = _generate(cli, folder)
    assert r.exit_code == 1 and not pwned.exists()
    assert r.stderr.startswith(f"Error: cannot load model from {folder}") and "Traceback" not in r.stderr


def test_adapter_with_a_pickled_bin_file(cli, tiny_model, tiny_llama_dir, tmp_path, pwned):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM", '
        f'"base_model_name_or_path": "{tiny_llama_dir}"}}'
    )
    plant(folder / "adapter_model.bin", pwned)
    r = _generate(cli, folder)
    assert r.exit_code == 1 and not pwned.exists()
    assert "adapter" in r.stderr and "Traceback" not in r.stderr


def test_inc_weight_only_folder(cli, tiny_llama_dir, tmp_path, pwned):
    folder = tmp_path / "inc"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "qconfig.json").write_text('{"model.layers.0.self_attn.q_proj": {"rtn": {"bits": 4}}}')
    plant(folder / "quantized_weight.pt", pwned)
    r = _generate(cli, folder)
    assert r.exit_code == 1 and not pwned.exists()
    assert r.stderr.startswith(f"Error: quantized weights in {folder}") and "Traceback" not in r.stderr


def test_int8_folder_in_the_old_pickle_layout_is_refused_unread(cli, tiny_llama_dir, tmp_path, pwned):
    folder = tmp_path / "int8"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "llmctl-entry.json").write_text('{"format": "inc-int8"}')
    plant(folder / "int8_state_dict.pt", pwned)
    r = _generate(cli, folder)
    assert r.exit_code == 1 and not pwned.exists()
    assert r.stderr.startswith(f"Error: {folder} holds int8 weights in the pickle format of older llmctl versions")


def test_training_checkpoint_is_never_unpickled(tmp_path, pwned):
    from llmctl.errors import LlmctlError
    from llmctl.training.state import Checkpointer

    step = tmp_path / "checkpoints" / "step-0000002"
    step.mkdir(parents=True)
    plant(step / "state.pt", pwned)
    with pytest.raises(LlmctlError, match=f"checkpoint {step / 'state.pt'} cannot be read"):
        Checkpointer(tmp_path / "checkpoints").load_latest()
    assert not pwned.exists()


def test_registered_entry_loads_through_the_same_safe_path(cli, tiny_llama_dir, tmp_path, pwned):
    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"")  # importable shape; replaced by the payload below
    assert cli("models", "import", folder, "--name", "evil", "--link").exit_code == 0
    plant(folder / "pytorch_model.bin", pwned)
    r = _generate(cli, "evil")
    assert r.exit_code == 1 and not pwned.exists()


def test_folder_asking_for_custom_code_is_refused_without_a_prompt(cli, tiny_llama_dir, tmp_path, pwned):
    import json

    folder = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text(f"open({str(pwned)!r}, 'w')\n")
    r = cli("generate", "--model", folder, "--prompt", "hi", "--json", input="y\n")
    assert r.exit_code == 1 and not pwned.exists()
    assert r.stdout == "" and "[y/N]" not in r.stderr
    assert r.stderr == (
        f"Error: {folder / 'config.json'} asks to run the folder's own Python code (auto_map); llmctl "
        f"never runs code from a model folder; use a model whose architecture transformers ships, or "
        f"remove auto_map if the built-in class is meant\n"
    )
    imp = cli("models", "import", folder, "--name", "remote")
    assert imp.exit_code == 1 and "auto_map" in imp.stderr


def test_no_torch_load_without_weights_only():
    """grep: every torch.load outside tests passes weights_only=True."""
    res = subprocess.run(["grep", "-rn", "torch.load(", "llmctl", "commands"], capture_output=True, text=True, cwd=ROOT)
    calls = [
        line
        for line in res.stdout.splitlines()
        if "torch.load(" in line and '"""' not in line and "`torch.load" not in line
    ]
    assert calls and all("weights_only=True" in line for line in calls), calls
