"""GGUF and Ollama export: written by llmctl.export, read back by independent readers.

Readers: transformers' own GGUF loader (tensors, config, tokenizer) and gguf-py's GGUFReader (keys, tensor types);
llama.cpp itself is not installed here. f32 must be exact (max |Δlogit| <= 1e-4). Bounds for the lossy types are
relative, max |Δlogit| / max |logit| over ~60 tokens, measured on the tiny random models (LLaMA / GPT-2):
f16 4.5e-4 / 1.9e-4, bf16 3.1e-3 / 1.5e-3, q8_0 1.0e-2 / 4.7e-3, q5_0 6.9e-2 / 2.4e-2, q4_1 0.17 / 0.04,
q4_0 0.15 / 0.05; the asserted bounds leave about 2x headroom. A wrong tensor layout gives ~1 or more.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny_llama
from llmctl.errors import LlmctlError
from llmctl.export.chat_templates import Family, detect_family, family_jinja
from llmctl.export.gguf_reader import gguf_metadata, gguf_tensor_types, load_gguf
from llmctl.export.gguf_writer import GGUF_TYPES, write_gguf
from llmctl.export.ollama import modelfile_text, write_ollama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, déjà vu: accents are bytes too. Emoji 😀",
    "Question: 12 + 345 = ?\n\n  Answer:\tcarbon dioxide",
    "What is the capital of France?",
]
SPECIAL_TEXT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
REL_BOUNDS = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 2.5e-2, "q5_0": 0.15, "q4_1": 0.35, "q4_0": 0.35}


def _load_source(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _read_back(out):
    """transformers' GGUF loader, with GPT-2's context length put where GPT2Config reads it (transformers maps
    gpt2.context_length to n_ctx, leaving n_positions at 1024)."""
    config = AutoConfig.from_pretrained(out.parent, gguf_file=out.name)
    if config.model_type == "gpt2":
        config.n_positions = config.n_ctx
    model = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, config=config, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer(" ".join(TEXTS), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def _max_rel_delta(src, back, tokenizer):
    a, b = _logits(src, tokenizer), _logits(back, tokenizer)
    return ((a - b).abs().max() / a.abs().max()).item(), (a - b).abs().max().item()


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_f32_round_trip_is_exact(fixture, request, tmp_path):
    src_dir = request.getfixturevalue(fixture)
    model, tok = _load_source(src_dir)
    out = tmp_path / "m.f32.gguf"
    facts = write_gguf(model, tok, out, "f32")
    assert facts["qtype"] == "f32" and facts["arch"] == model.config.model_type and out.stat().st_size == facts["size"]
    back, back_tok = _read_back(out)
    _, abs_delta = _max_rel_delta(model, back, tok)
    assert abs_delta <= 1e-4
    for text in TEXTS:
        assert back_tok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    meta = gguf_metadata(out, arrays=True)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (
        tok.bos_token_id,
        tok.eos_token_id,
    )
    assert meta["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the tiny tokenizer adds no BOS when encoding
    types = meta["tokenizer.ggml.token_type"]
    assert [types[i] for i in (0, 1, 2)] == [3, 3, 3] and set(types[3:]) == {1}  # specials are CONTROL
    assert meta["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]


def test_llama_special_tokens_and_hyperparameters_survive(tiny_llama_dir, tmp_path):
    model, tok = _load_source(tiny_llama_dir)
    out = tmp_path / "m.gguf"
    write_gguf(model, tok, out, "f32", name="tiny")
    _, back_tok = _read_back(out)
    assert (
        back_tok(SPECIAL_TEXT, add_special_tokens=False)["input_ids"]
        == tok(SPECIAL_TEXT, add_special_tokens=False)["input_ids"]
    )
    meta = gguf_metadata(out)
    assert {
        k: meta[k]
        for k in (
            "general.name",
            "general.architecture",
            "llama.context_length",
            "llama.embedding_length",
            "llama.block_count",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.dimension_count",
            "llama.vocab_size",
            "general.file_type",
        )
    } == {
        "general.name": "tiny",
        "general.architecture": "llama",
        "llama.context_length": 256,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": 384,
        "general.file_type": 0,
    }
    assert meta["llama.rope.freq_base"] == pytest.approx(model.config.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(model.config.rms_norm_eps)
    assert "output.weight" in gguf_tensor_types(out)  # untied: llama.cpp needs its own output tensor
    write_gguf(model, tok, out, "f32", force=True, add_bos=True)
    assert gguf_metadata(out)["tokenizer.ggml.add_bos_token"] is True
    # the chat template renders the same conversation in the reader
    chat = [{"role": "user", "content": "hi"}]
    assert back_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )


def test_gpt2_layout_and_keys(tiny_gpt2_dir, tmp_path):
    model, tok = _load_source(tiny_gpt2_dir)
    out = tmp_path / "g.gguf"
    write_gguf(model, tok, out, "f32")
    meta, types = gguf_metadata(out), gguf_tensor_types(out)
    assert (
        meta["gpt2.context_length"],
        meta["gpt2.embedding_length"],
        meta["gpt2.block_count"],
        meta["gpt2.feed_forward_length"],
        meta["gpt2.attention.head_count"],
    ) == (256, 64, 2, 256, 4)
    assert "output.weight" not in types and "position_embd.weight" in types  # tied lm_head: no copy written
    import gguf

    reader = gguf.GGUFReader(str(out))
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    # GGUF shapes are ggml order (in, out); Conv1D's (in, out) weight is stored transposed like a Linear
    assert list(qkv.shape) == [64, 192]
    assert torch.equal(torch.from_numpy(qkv.data.copy()), model.transformer.h[0].attn.c_attn.weight.T)


@pytest.mark.parametrize("qtype", [t for t in GGUF_TYPES if t != "f32"])
def test_lossy_types_stay_within_bounds(qtype, tiny_llama_dir, tmp_path):
    model, tok = _load_source(tiny_llama_dir)
    out = tmp_path / f"m.{qtype}.gguf"
    facts = write_gguf(model, tok, out, qtype)
    types = gguf_tensor_types(out)
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == qtype.upper()
    assert types["token_embd.weight"] == qtype.upper()  # untied embedding: the file's type
    expected_output = "Q8_0" if qtype in ("q4_0", "q4_1", "q5_0") else qtype.upper()
    assert types["output.weight"] == expected_output  # llama-quantize keeps the output at 8 bits
    assert facts["fallback_f16"] == []
    rel, _ = _max_rel_delta(model, _read_back(out)[0], tok)
    assert rel <= REL_BOUNDS[qtype]


def test_gqa_tied_embeddings(tmp_path):
    src = build_tiny_llama(tmp_path / "gqa", num_key_value_heads=1, tie_word_embeddings=True)
    model, tok = _load_source(src)
    out = tmp_path / "gqa.gguf"
    write_gguf(model, tok, out, "f32")
    types = gguf_tensor_types(out)
    assert "output.weight" not in types
    assert gguf_metadata(out)["llama.attention.head_count_kv"] == 1
    back, _ = _read_back(out)
    assert back.config.tie_word_embeddings and back.config.num_key_value_heads == 1
    assert _max_rel_delta(model, back, tok)[1] <= 1e-4
    out4 = tmp_path / "gqa.q4_0.gguf"
    write_gguf(model, tok, out4, "q4_0")
    assert gguf_tensor_types(out4)["token_embd.weight"] == "Q8_0"  # the tied embedding is also the output


def test_rows_not_multiple_of_block_fall_back_to_f16(tmp_path):
    # hidden 48 and ffn 80: rows of 48 or 80 weights do not split into blocks of 32
    src = build_tiny_llama(tmp_path / "odd", hidden_size=48, intermediate_size=96, num_attention_heads=4)
    model, tok = _load_source(src)
    out = tmp_path / "odd.q4_0.gguf"
    facts = write_gguf(model, tok, out, "q4_0")
    types = gguf_tensor_types(out)
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q4_0"  # its rows are 96 weights long: 3 blocks
    assert "blk.0.attn_q.weight" in facts["fallback_f16"]
    assert _max_rel_delta(model, _read_back(out)[0], tok)[0] <= REL_BOUNDS["q4_0"]


def test_rope_scaling_keys(tmp_path):
    import gguf

    linear = build_tiny_llama(tmp_path / "lin", rope_scaling={"rope_type": "linear", "factor": 2.0})
    model, tok = _load_source(linear)
    write_gguf(model, tok, tmp_path / "lin.gguf", "f32")
    meta = gguf_metadata(tmp_path / "lin.gguf")
    assert (meta["llama.rope.scaling.type"], meta["llama.rope.scaling.factor"]) == ("linear", 2.0)

    yarn = build_tiny_llama(
        tmp_path / "yarn", rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    )
    model, tok = _load_source(yarn)
    write_gguf(model, tok, tmp_path / "yarn.gguf", "f32")
    meta = gguf_metadata(tmp_path / "yarn.gguf")
    assert (
        meta["llama.rope.scaling.type"],
        meta["llama.rope.scaling.factor"],
        meta["llama.rope.scaling.original_context_length"],
    ) == ("yarn", 4.0, 64)

    llama3 = build_tiny_llama(
        tmp_path / "l3",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    model, tok = _load_source(llama3)
    write_gguf(model, tok, tmp_path / "l3.gguf", "q8_0")
    freqs = next(t for t in gguf.GGUFReader(str(tmp_path / "l3.gguf")).tensors if t.name == "rope_freqs.weight")
    assert freqs.tensor_type.name == "F32" and len(freqs.data) == 8  # one factor per rotary pair (head_dim 16)
    assert freqs.data.min() == pytest.approx(1.0) and freqs.data.max() == pytest.approx(8.0)

    dynamic = build_tiny_llama(tmp_path / "dyn", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    model, tok = _load_source(dynamic)
    with pytest.raises(LlmctlError) as err:
        write_gguf(model, tok, tmp_path / "dyn.gguf", "f32")
    assert err.value.one_line() == (
        "RoPE scaling 'dynamic' cannot be written to a GGUF LLaMA model; "
        "supported RoPE scalings: linear, yarn, llama3 (or none)"
    )
    assert list(tmp_path.glob("dyn.gguf*")) == [] and list(tmp_path.glob(".dyn.gguf*")) == []


def test_bad_inputs_give_one_line_errors(tiny_llama_dir, tmp_path):
    model, tok = _load_source(tiny_llama_dir)
    with pytest.raises(LlmctlError) as err:
        write_gguf(model, tok, tmp_path / "m.gguf", "q3_k")
    assert err.value.one_line() == "unknown GGUF type 'q3_k'; use one of: f32, f16, bf16, q8_0, q5_0, q4_1, q4_0"
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(LlmctlError) as err:
        write_gguf(model, tok, existing, "f32")
    assert err.value.one_line() == f"output {existing} already exists; pick another path or pass --force"
    assert existing.read_bytes() == b"keep me"
    write_gguf(model, tok, existing, "f32", force=True)
    assert gguf_metadata(existing)["general.architecture"] == "llama"


def test_unknown_architecture_is_named(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(
        MistralConfig(
            vocab_size=384,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    tok = AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path / "t"))
    with pytest.raises(LlmctlError) as err:
        write_gguf(model, tok, tmp_path / "x.gguf", "f16")
    assert err.value.one_line() == (
        "architecture 'mistral' cannot be exported to GGUF; supported architectures: llama, gpt2"
    )


def test_unrepresentable_tokenizer_is_named(tiny_llama_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.train_from_iterator(TEXTS * 5, trainers.UnigramTrainer(vocab_size=60, show_progress=False))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(LlmctlError) as err:
        write_gguf(model, PreTrainedTokenizerFast(tokenizer_object=uni), tmp_path / "u.gguf", "f32")
    assert err.value.one_line() == (
        "tokenizer kind Unigram with pre-tokenizer Metaspace cannot be written to GGUF; GGUF export supports "
        "byte-level BPE (GPT-2 style: llmctl-trained BPE, SmolLM2, GPT-2, LLaMA 3)"
    )
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    import gguf

    def broken(self, **_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    model, tok = _load_source(tiny_llama_dir)
    with pytest.raises(LlmctlError) as err:
        write_gguf(model, tok, tmp_path / "m.gguf", "f32")
    assert err.value.one_line() == (
        f"cannot write {tmp_path / 'm.gguf'} (No space left on device); check free disk space and permissions"
    )
    assert list(tmp_path.iterdir()) == []


def test_hf_folder_input_and_reader_helper(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "g.q8_0.gguf"
    write_gguf(tiny_gpt2_dir, None, out, "q8_0")
    back, back_tok = load_gguf(out)
    assert back.config.n_positions == 256 and back_tok.eos_token == "<|im_end|>"
    src, tok = _load_source(tiny_gpt2_dir)
    assert _max_rel_delta(src, back, tok)[0] <= REL_BOUNDS["q8_0"]


# ---- Ollama ----

CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_ollama_folder_for_chatml(tiny_llama_dir, tmp_path):
    model, tok = _load_source(tiny_llama_dir)
    gguf_file = tmp_path / "m.gguf"
    write_gguf(model, tok, gguf_file, "q8_0")
    facts = write_ollama(gguf_file, tok, model.config, tmp_path / "ollama")
    out = tmp_path / "ollama"
    assert sorted(p.name for p in out.iterdir()) == [".llmctl-output", "Modelfile", "model.gguf"]
    assert (out / "model.gguf").read_bytes() == gguf_file.read_bytes()
    assert (out / "Modelfile").read_text() == (
        "FROM ./model.gguf\n"
        f'TEMPLATE """{CHATML_GO}"""\n'
        'PARAMETER stop "<|im_start|>"\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER num_ctx 256\n"
    )
    assert facts["template"] == "chatml" and facts["num_ctx"] == 256
    with pytest.raises(LlmctlError) as err:
        write_ollama(gguf_file, tok, model.config, out)
    assert err.value.one_line() == f"output folder {out} already exists; pick another path or pass --force"


def test_ollama_chatml_default_system_becomes_system(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = SMOLLM2_TEMPLATE
    family = detect_family(tok)
    assert family == Family("chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    assert modelfile_text(family, tok.eos_token, 8192) == (
        "FROM ./model.gguf\n"
        f'TEMPLATE """{CHATML_GO}"""\n'
        'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""\n'
        'PARAMETER stop "<|im_start|>"\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER num_ctx 8192\n"
    )


def test_ollama_untranslatable_template_is_refused(tiny_llama_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(LlmctlError) as err:
        write_ollama(tmp_path / "m.gguf", tok, AutoConfig.from_pretrained(tiny_llama_dir), tmp_path / "o")
    assert err.value.one_line() == (
        "the model's chat template cannot be translated to an Ollama template: it "
        "renders conversations unlike ChatML and Alpaca; name the template it was "
        "trained with: one of chatml, alpaca"
    )
    assert not (tmp_path / "o").exists()


def test_alpaca_jinja_renders_as_llmctl_finetune_does(tiny_llama_dir):
    from llmctl.data.sft import segments

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Red."},
        ]
    }
    trained = "".join(text for text, _ in segments(record, "chat", "alpaca", tok))
    assert tok.apply_chat_template(record["messages"], chat_template=family_jinja("alpaca"), tokenize=False) == trained
    assert detect_family(tok, family_jinja("alpaca")) == Family("alpaca")


def test_alpaca_finetune_exports_its_template(tiny_llama_dir, tmp_path):
    """A model finetuned with data.template=alpaca keeps a ChatML tokenizer template; the export names the
    template it was trained with, and the GGUF and the Modelfile both carry Alpaca."""
    from llmctl.export.chat_templates import family_go_template

    model, tok = _load_source(tiny_llama_dir)
    out = tmp_path / "a.gguf"
    write_gguf(model, tok, out, "q8_0", chat_template=family_jinja("alpaca"))
    assert gguf_metadata(out)["tokenizer.chat_template"] == family_jinja("alpaca")
    facts = write_ollama(out, tok, model.config, tmp_path / "o", template="alpaca")
    assert facts["stops"] == ["### Instruction:", "<|im_end|>"]
    assert (tmp_path / "o" / "Modelfile").read_text() == (
        "FROM ./model.gguf\n"
        f'TEMPLATE """{family_go_template(Family("alpaca"), "<|im_end|>")}"""\n'
        'PARAMETER stop "### Instruction:"\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER num_ctx 256\n"
    )


_GO_RENDER = """package main
import ("encoding/json"; "os"; "text/template")
type Message struct { Role string `json:"role"`; Content string `json:"content"` }
type Input struct {
    Template string `json:"template"`; System string `json:"system"`; Messages []Message `json:"messages"`
}
func main() {
    var in Input
    if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil { panic(err) }
    t := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
    data := map[string]any{"System": in.System, "Messages": in.Messages, "Response": ""}
    if err := t.Execute(os.Stdout, data); err != nil { panic(err) }
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to run Ollama's template language")
@pytest.mark.parametrize("template", ["chatml", "alpaca", "smollm2"])
def test_ollama_template_renders_like_the_jinja(template, tiny_llama_dir, tmp_path):
    """Go's text/template (Ollama's engine), given what Ollama passes (.Messages; SYSTEM prepended as a system
    message when the conversation has none), renders exactly what the Jinja template renders."""
    from llmctl.export.chat_templates import _PROBES, family_go_template

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    jinja = SMOLLM2_TEMPLATE if template == "smollm2" else family_jinja(template)
    family = detect_family(tok, jinja)
    (tmp_path / "main.go").write_text(_GO_RENDER)
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "HOME": str(tmp_path), "GO111MODULE": "off"}
    binary = tmp_path / "render"
    subprocess.run(["go", "build", "-o", str(binary), str(tmp_path / "main.go")], check=True, env=env, cwd=tmp_path)
    for probe in _PROBES:
        messages = (
            probe
            if not family.system or probe[0]["role"] == "system"
            else [{"role": "system", "content": family.system}, *probe]
        )
        payload = {
            "template": family_go_template(family, tok.eos_token),
            "messages": messages,
            "system": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
        }
        go = subprocess.run([str(binary)], input=json.dumps(payload), capture_output=True, text=True, check=True)
        assert go.stdout == tok.apply_chat_template(
            probe, chat_template=jinja, tokenize=False, add_generation_prompt=True
        )


@pytest.mark.default_model
def test_default_model_round_trip(default_model, default_model_dir, tmp_path):
    """The default model (imported from its shipped Q4_1 GGUF) exported to q8_0 and read back by transformers
    continues prompts greedily exactly as the source does; its keys match the shipped file's."""
    from llmctl.models.default import gguf_path

    model, tok = _load_source(default_model_dir)
    out = tmp_path / "smol.Q8_0.gguf"
    facts = write_gguf(model, tok, out, "q8_0")
    assert facts["pre_tokenizer"] == "smollm" and facts["tensor_types"] == {"Q8_0": 211, "F32": 61}
    back, back_tok = load_gguf(out)
    for prompt in ["The capital of France is", "def fibonacci(n):", "Plants absorb"]:
        ids = tok(prompt, return_tensors="pt")
        assert back_tok(prompt)["input_ids"] == ids["input_ids"][0].tolist()
        want = model.generate(**ids, max_new_tokens=16, do_sample=False)
        got = back.generate(**ids, max_new_tokens=16, do_sample=False)
        assert got.tolist() == want.tolist(), tok.decode(got[0])
    shipped, ours = gguf_metadata(gguf_path(), arrays=True), gguf_metadata(out, arrays=True)
    same = [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "llama.rope.dimension_count",
    ]
    assert {k: ours[k] for k in same} == {k: shipped[k] for k in same}
    # add_bos follows what the registry's tokenizer does (its GGUF import prepends <|im_start|>; the shipped
    # file says false), so llama.cpp sees the token ids llmctl's own generate feeds the model
    assert ours["tokenizer.ggml.add_bos_token"] == (tok("a")["input_ids"][0] == tok.bos_token_id)
    assert "output.weight" not in gguf_tensor_types(out)
    # The shipped file is llama.cpp's Q4_1 of this model; exporting the imported model to q4_1 must give back
    # the same bytes for every tensor (names, layouts incl. the q/k rotary permutation, types, Q8_0 embedding).
    import gguf

    again = tmp_path / "smol.Q4_1.gguf"
    write_gguf(model, tok, again, "q4_1")
    theirs = {t.name: t for t in gguf.GGUFReader(str(gguf_path())).tensors}
    mine = {t.name: t for t in gguf.GGUFReader(str(again)).tensors}
    assert sorted(mine) == sorted(theirs)
    for name, tensor in theirs.items():
        assert mine[name].tensor_type == tensor.tensor_type and bytes(mine[name].data) == bytes(tensor.data), name
    folder = write_ollama(out, tok, model.config, tmp_path / "ollama")
    assert folder["template"] == "chatml" and folder["num_ctx"] == 8192
    assert folder["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


# ---- LoRA adapters as GGUF ----


def _lora_adapter(src_dir, dest, targets, **options):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **options)
    )
    peft_model.save_pretrained(dest)
    return peft_model


@pytest.mark.parametrize(
    "fixture,targets,rslora",
    [
        ("tiny_llama_dir", ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], False),
        ("tiny_llama_dir", ["q_proj", "k_proj"], True),
        ("tiny_gpt2_dir", ["c_attn", "c_fc"], False),
    ],
)
def test_lora_gguf_adds_what_peft_merges(fixture, targets, rslora, request, tmp_path):
    """base GGUF weight + (alpha / rank) * lora_b @ lora_a, as llama.cpp applies it, equals the GGUF weight of the
    model PEFT merged: names, orientation, the rotary permutation and alpha all agree."""
    import gguf

    from llmctl.export.gguf_lora import write_lora_gguf

    src_dir = request.getfixturevalue(fixture)
    peft_model = _lora_adapter(src_dir, tmp_path / "lora", targets, use_rslora=rslora)
    base, tok = _load_source(src_dir)
    write_gguf(base, tok, tmp_path / "base.gguf", "f32")
    facts = write_lora_gguf(tmp_path / "lora", base.config, tmp_path / "lora.gguf")
    write_gguf(peft_model.merge_and_unload(), tok, tmp_path / "merged.gguf", "f32")
    meta = gguf_metadata(tmp_path / "lora.gguf")
    assert (meta["general.type"], meta["adapter.type"]) == ("adapter", "lora")
    alpha = meta["adapter.lora.alpha"]
    assert alpha == pytest.approx(8 * 2 if rslora else 8)  # rsLoRA's alpha/sqrt(r) folded into alpha/r
    tensors = {
        name: {t.name: t.data for t in gguf.GGUFReader(str(tmp_path / name)).tensors}
        for name in ("base.gguf", "lora.gguf", "merged.gguf")
    }
    adapted = sorted(n[: -len(".lora_a")] for n in tensors["lora.gguf"] if n.endswith(".lora_a"))
    assert len(adapted) == facts["pairs"] == len(targets) * 2
    for name in adapted:
        a, b = tensors["lora.gguf"][name + ".lora_a"], tensors["lora.gguf"][name + ".lora_b"]
        applied = tensors["base.gguf"][name] + alpha / a.shape[0] * (b @ a)
        assert abs(applied - tensors["merged.gguf"][name]).max() <= 1e-5, name


def test_lora_gguf_refuses_what_llama_cpp_cannot_apply(tiny_llama_dir, tmp_path):
    from llmctl.export.gguf_lora import write_lora_gguf

    _lora_adapter(tiny_llama_dir, tmp_path / "dora", ["q_proj"], use_dora=True)
    with pytest.raises(LlmctlError) as err:
        write_lora_gguf(tmp_path / "dora", AutoConfig.from_pretrained(tiny_llama_dir), tmp_path / "d.gguf")
    assert err.value.one_line() == (
        f"adapter {tmp_path / 'dora'} cannot be written as a GGUF LoRA: it is a DoRA adapter (magnitude vectors "
        "llama.cpp does not apply); merge it into the base model and export the merged model instead"
    )
    assert not (tmp_path / "d.gguf").exists()
