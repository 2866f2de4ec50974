"""Cross-cutting helpers with one definition each (issue 28): ChatML, dtypes, context length, decoder blocks,
the run-config file, the progress protocol, a data dir's tokenizer, the shared recipe of model-making commands.

Examples:
    pytest tests/test_one_home.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_chatml_jinja_renders_as_the_python(messages, gen):
    """The Jinja template (tokenizers, GGUF) and the Python rendering (finetune) are the same ChatML."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from llmctl.data.chat_templates import CHATML_JINJA, chatml

    jinja = ImmutableSandboxedEnvironment().from_string(CHATML_JINJA)
    assert jinja.render(messages=messages, add_generation_prompt=gen) == chatml(messages, gen)


def test_chatml_go_template_uses_the_same_markers():
    from llmctl.data.chat_templates import CHATML_END, CHATML_GO, CHATML_START

    assert CHATML_GO == (
        f"{{{{- range .Messages }}}}{CHATML_START}{{{{ .Role }}}}\n{{{{ .Content }}}}{CHATML_END}\n{{{{ end }}}}"
        f"{CHATML_START}assistant\n"
    )


def test_no_other_chatml_spelling():
    """`<|im_start|>` is spelled in code only where ChatML is defined (docstrings, comments and help aside)."""
    spelled = []
    for path in sorted((ROOT / "llmctl").rglob("*.py")):
        if (path.name == "chat_templates.py" and path.parent.name == "data") or path.parent.name == "schemas":
            continue  # the definition; help texts that name the token
        tree = ast.parse(path.read_text(encoding="utf-8"))
        owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, owners) and ast.get_docstring(n, clean=False) is not None
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if "<|im_start|>" in node.value:
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert spelled == []


def test_dtype_table_feeds_the_schema_loading_and_export():
    from llmctl.config import schema
    from llmctl.config.dtypes import DTYPE_ALIASES, DTYPE_NAMES, DTYPES, EXPORT_FLOAT_TYPES
    from llmctl.export.targets import FLOAT_TYPES

    assert schema.DTYPES is DTYPES and schema.DTYPE_ALIASES is DTYPE_ALIASES
    assert DTYPE_NAMES == {
        "float32": "float32",
        "bfloat16": "bfloat16",
        "float16": "float16",
        "fp32": "float32",
        "bf16": "bfloat16",
        "fp16": "float16",
    }
    assert FLOAT_TYPES == ("f32", "f16", "bf16")
    assert EXPORT_FLOAT_TYPES == {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def test_auto_dtype_has_two_meanings_side_by_side():
    """On a CPU with native bf16, `auto` trains in bf16 but loads weights for inference in float32."""
    from llmctl.config.dtypes import auto_dtype
    from llmctl.models.loading import pick_dtype

    assert auto_dtype("inference", "cpu", cpu_bf16=True) == "float32"
    assert auto_dtype("training", "cpu", cpu_bf16=True) == "bfloat16"
    assert auto_dtype("training", "cpu", cpu_bf16=False) == "float32"
    assert str(pick_dtype("auto", "cpu")) == "torch.float32"
    assert str(pick_dtype("bf16", "cpu")) == "torch.bfloat16"


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"max_position_embeddings": 2048}, 2048),
        ({"n_positions": 1024}, 1024),
        ({"n_ctx": 512}, 512),
        ({}, None),
    ],
)
def test_context_length_is_read_one_way(config, expected):
    """perplexity, the hf backend and Ollama's num_ctx read the same keys (llmctl.models.rope.positions)."""
    from llmctl.errors import LlmctlError
    from llmctl.evaluate.perplexity import model_max_length
    from llmctl.export.ollama import context_length
    from llmctl.inference.backends.hf import model_context
    from llmctl.models.rope import positions

    cfg = SimpleNamespace(**config)
    assert positions(cfg) == expected
    assert model_max_length(SimpleNamespace(config=cfg)) == expected
    assert model_context(cfg, default=7) == (expected or 7)
    if expected is None:
        with pytest.raises(LlmctlError):
            context_length(cfg)
    else:
        assert context_length(cfg) == expected


def test_decoder_blocks_are_found_one_way(tiny_llama_dir, tiny_gpt2_dir):
    """LLaMA's model.layers and GPT-2's transformer.h, also through a PEFT wrapper (FSDP's sharding units)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmctl.compress.blocks import decoder_layers as cores_blocks
    from llmctl.models.formats.hf import decoder_layers
    from llmctl.training.dist import decoder_layers as fsdp_units

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert decoder_layers(llama) is llama.model.layers and cores_blocks(gpt2) is gpt2.transformer.h
    peft = get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj"]))
    assert fsdp_units(peft) == list(llama.model.layers)
    assert fsdp_units(SimpleNamespace(modules=lambda: iter(()))) == []


def test_run_config_file_is_spelled_once():
    """`llmctl-config.yaml` appears once in llmctl/ (RUN_CONFIG_FILE); publishing goes through one recipe."""
    hits = {
        str(p.relative_to(ROOT)): p.read_text(encoding="utf-8").count('"llmctl-config.yaml"')
        for p in (ROOT / "llmctl").rglob("*.py")
    }
    assert {p: n for p, n in hits.items() if n} == {"llmctl/config/profiles.py": 1}
    makers = ["quantize/service.py", "quantize/tune.py", "prune/service.py", "merge_lora/service.py"]
    makers += ["export/service.py", "finetune/service.py", "pretrain/service.py"]
    for rel in makers:
        text = (ROOT / "llmctl" / rel).read_text(encoding="utf-8")
        assert ("publish_model(" in text or "src.publish(" in text) and "ModelEntry(" not in text, rel


def test_publish_model_writes_config_and_entry(tmp_path):
    from llmctl.config.profiles import RUN_CONFIG_FILE
    from llmctl.models.publish import publish_model
    from llmctl.models.registry import Registry

    reg = Registry()
    res = reg.reserve("made", force=False)
    with res.staging() as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
        entry = publish_model(
            res, tmp, "hf", parents=["base", None], config={"a": 1}, command="llmctl x", meta={"k": 2}
        )
    assert (entry.parents, entry.profile, entry.meta, entry.metrics) == (["base"], {"a": 1}, {"k": 2}, {})
    assert (Path(reg.get("made").path) / RUN_CONFIG_FILE).read_text().startswith("# resolved config of: llmctl x")


def test_progress_protocol_takes_messages_and_counts():
    from llmctl.runtime.progress import quiet

    said = []

    def say(message, done=None, total=None):
        said.append((message, done, total))

    from llmctl.compress.progress import BlockETA

    eta = BlockETA(say, "gptq", total=2)
    eta.start(0)
    quiet("ignored", 1, 2)
    assert said[0][0].startswith("gptq: block 1/2")


def test_data_dir_tokenizer_is_found_one_way(tmp_path):
    """The recorded folder first, else the registry name's folder, else None (each caller words the error)."""
    from llmctl.data.token_data import recorded_tokenizer
    from llmctl.models.registry import ModelEntry, Registry

    folder = tmp_path / "tok"
    folder.mkdir()
    assert recorded_tokenizer({"name": None, "path": str(folder)}) == (None, folder)
    Registry().add(ModelEntry(name="tok", format="tokenizer", path=str(folder), managed=False))
    assert recorded_tokenizer({"name": "tok", "path": str(tmp_path / "gone")}) == ("tok", folder)
    assert recorded_tokenizer({"name": None, "path": str(tmp_path / "gone")}) == (None, None)
