"""Shared fixtures: an isolated LLMCTL_HOME per test, tiny random models, and the real default model.

Tiny models are built here from scratch (no downloads); the real default model is converted from
its GGUF once per test session and linked into each test's registry when a test asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.data.chat_templates import CHATML_JINJA

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHATML = CHATML_JINJA  # the tiny tokenizers speak llmctl's one ChatML

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Language models predict the next token from the previous ones.",
    "Café, naïve, déjà vu: accents are bytes too. Emoji 😀 as well.",
    "Below is an instruction that describes a task. Write a response that completes the request.",
    "Question: Which gas do plants absorb? Answer: carbon dioxide.",
] * 20


@pytest.fixture(autouse=True)
def llmctl_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty registry."""
    home = tmp_path / "llmctl-home"
    monkeypatch.setenv("LLMCTL_HOME", str(home))
    monkeypatch.delenv("LLMCTL_DEBUG", raising=False)
    return home


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke llmctl in-process: cli("models", "list", input=None) -> click Result (stdout/stderr split)."""
    from llmctl.cli.main import app

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


def build_tiny_tokenizer(dest: Path):
    """A 384-token byte-level BPE with ChatML special tokens, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(dest)
    return fast


def build_tiny_llama(dest: Path, seed: int = 0, **overrides) -> Path:
    """A 2-layer LLaMA (hidden 64, GQA 4/2 heads) with random weights and the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(dest)
    cfg = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def build_tiny_gpt2(dest: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (hidden 64) with random weights and the tiny tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tiny_tokenizer(dest)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(dest, safe_serialization=True)
    return dest


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def tiny_model(tiny_llama_dir) -> str:
    """The tiny LLaMA registered (in place) in this test's registry as 'tiny'."""
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    import_model(Registry(), str(tiny_llama_dir), "tiny", link=True)
    return "tiny"


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory) -> Path:
    """The real default model converted from its GGUF once per session (about 30 s)."""
    from llmctl.models.default import gguf_path
    from llmctl.models.formats.hf import gguf_to_hf

    dest = tmp_path_factory.mktemp("smollm2")
    gguf_to_hf(gguf_path(), dest)
    return dest


@pytest.fixture
def default_model(default_model_dir) -> str:
    """The default model under its registry name in this test's registry."""
    from llmctl.models.default import DEFAULT_MODEL_NAME
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    import_model(Registry(), str(default_model_dir), DEFAULT_MODEL_NAME, link=True)
    return DEFAULT_MODEL_NAME


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
