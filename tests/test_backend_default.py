"""The default backend (`auto`): the fp32 OpenVINO IR for full-precision entries on CPU, same answers as hf."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

HAS_GENAI = importlib.util.find_spec("openvino_genai") is not None and importlib.util.find_spec("optimum") is not None


@pytest.fixture
def cpu_only(monkeypatch):
    from llmctl.inference import backends

    monkeypatch.setattr(backends, "_cuda", lambda: False)
    return backends


def _installed(*names):
    return lambda name: name == "hf" or name in names


def test_auto_without_openvino_keeps_hf(tiny_model, cpu_only, monkeypatch):
    from llmctl.models.resolve import resolve_model

    monkeypatch.setattr(cpu_only, "installed", _installed())
    resolved = resolve_model(tiny_model)
    assert cpu_only.choose(resolved, "cpu", work_tokens=10**6) == ("hf", "no faster backend fits this model here")


def test_auto_converts_only_for_enough_work_or_a_cached_ir(tiny_model, tiny_llama_dir, cpu_only, monkeypatch):
    from llmctl.inference.backends import openvino
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.models.resolve import ResolvedModel, resolve_model

    monkeypatch.setattr(cpu_only, "installed", _installed("openvino"))
    resolved = resolve_model(tiny_model)
    enough = cpu_only.AUTO_CONVERT_TOKENS
    name, why = cpu_only.choose(resolved, "cpu", work_tokens=enough - 1)
    assert (name, why) == ("hf", f"a short run (under {enough} new tokens): tiny-ov-fp32 is not made for it")
    assert cpu_only.choose(resolved, "cpu", work_tokens=enough)[0] == "openvino"
    assert cpu_only.choose(resolved, "auto", work_tokens=enough)[0] == "openvino"
    # what only hf does, another device, or a bare path (nowhere to keep a conversion): hf
    assert cpu_only.choose(resolved, "cpu", hf_only="beam search", work_tokens=enough)[0] == "hf"
    assert cpu_only.choose(resolved, "mps", work_tokens=enough)[0] == "hf"
    bare = ResolvedModel(path=str(tiny_llama_dir), format="hf")
    assert cpu_only.choose(bare, "cpu", work_tokens=enough)[0] == "hf"

    # a cached fp32 IR is used whatever the work; a cached int8 one only when named (it changes answers)
    monkeypatch.setattr(openvino, "cached_conversion", lambda r, bits=8: object() if bits == 32 else None)
    assert cpu_only.choose(resolved, "cpu") == (
        "openvino",
        "its fp32 OpenVINO IR tiny-ov-fp32 is cached (same weights; --backend hf: transformers)",
    )
    # serve keeps hf even then: its clients ask for log-probs, echo and structured output, which only hf answers
    assert cpu_only.choose(resolved, "cpu", fp32_ir=False) == ("hf", "no faster backend fits this model here")
    monkeypatch.setattr(openvino, "cached_conversion", lambda r, bits=8: object() if bits == 8 else None)
    assert cpu_only.choose(resolved, "cpu")[0] == "hf"

    opts = BackendOptions(max_batch=1)
    assert cpu_only.auto_options("openvino", resolved, opts).openvino_bits == 32
    assert cpu_only.auto_options("hf", resolved, opts) is opts
    as_ir = ResolvedModel(path=str(tiny_llama_dir), format="openvino")
    assert cpu_only.auto_options("openvino", as_ir, opts).openvino_bits == 8


def test_generate_work_and_seeded_sampling_decide(tiny_model, cpu_only, monkeypatch):
    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import pick_backend

    monkeypatch.setattr(cpu_only, "installed", _installed("openvino"))
    enough = cpu_only.AUTO_CONVERT_TOKENS
    config = resolve_config("generate", explicit={"device": "cpu", "max_new_tokens": enough // 4})
    assert pick_backend(tiny_model, config, None, prompts=3)[1] == "hf"
    assert pick_backend(tiny_model, config, None, prompts=4)[1] == "openvino"
    seeded = dict(config, do_sample=True, temperature=0.8, seed=1)
    _, name, why = pick_backend(tiny_model, seeded, None, prompts=4)
    assert (name, why) == ("hf", "sampling with --seed needs the hf backend")
    assert pick_backend(tiny_model, dict(config, backend="hf"), None, prompts=4)[1:] == ("hf", "asked for")


def test_cached_conversion_is_invalid_once_the_source_changes(tiny_model, monkeypatch):
    from llmctl.inference.backends import openvino
    from llmctl.models.registry import ModelEntry, Registry
    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(tiny_model)
    assert openvino.child_name("tiny", 32) == "tiny-ov-fp32"
    assert openvino.child_name("tiny", 8) == "tiny-ov-int8"
    registry = Registry()
    reservation = registry.reserve("tiny-ov-fp32")
    meta = {"converted_from": "tiny", "source_created": resolved.entry.created, "bits": 32}
    with reservation.staging() as tmp:
        (tmp / "openvino_model.xml").write_text("<net/>")
        reservation.publish(
            ModelEntry(name="tiny-ov-fp32", format="openvino", path="", parents=["tiny"], meta=meta), tmp
        )
    assert openvino.cached_conversion(resolved, 32).name == "tiny-ov-fp32"
    assert openvino.cached_conversion(resolved, 8) is None  # an fp32 IR is not the int8 conversion
    changed = dataclasses.replace(
        resolved, entry=dataclasses.replace(resolved.entry, created=resolved.entry.created + 1)
    )
    assert openvino.cached_conversion(changed, 32) is None


@pytest.mark.skipif(not HAS_GENAI, reason="needs llmctl[openvino]")
def test_fp32_ir_is_made_once_reused_and_answers_like_hf(cli, tiny_model, cpu_only, monkeypatch):
    from llmctl.inference.backends import openvino

    prompts = ["Hello there", "The cat sat"]
    args = ["generate", "--model", tiny_model, "--max-new-tokens", "12", "--json"]
    hf = [cli(*args, "--backend", "hf", "--prompt", p) for p in prompts]
    monkeypatch.setattr(cpu_only, "AUTO_CONVERT_TOKENS", 12)  # so that one 12-token answer is enough work
    made = []
    real_convert = openvino.convert
    monkeypatch.setattr(openvino, "convert", lambda *a, **k: made.append(a[1]) or real_convert(*a, **k))
    auto = [cli(*args, "--prompt", p) for p in prompts]
    assert made == [32]  # converted once (fp32), then reused
    assert "converting tiny to OpenVINO IR (fp32 weights, unchanged) once → tiny-ov-fp32" in auto[0].stderr
    assert "converting" not in auto[1].stderr
    import json

    for h, a in zip(hf, auto):
        assert h.exit_code == a.exit_code == 0, a.stderr
        h, a = json.loads(h.stdout), json.loads(a.stdout)
        assert a["stats"]["backend"] == "openvino" and h["stats"]["backend"] == "hf"
        assert a["results"][0]["output"] == h["results"][0]["output"]  # greedy, same weights, fp32 both
        assert a["results"][0]["new_tokens"] == h["results"][0]["new_tokens"]
    monkeypatch.setattr(cpu_only, "AUTO_CONVERT_TOKENS", 10**9)  # a short run now: the cached IR still serves it
    again = json.loads(cli(*args, "--prompt", prompts[0]).stdout)
    assert again["stats"]["backend"] == "openvino" and made == [32]
    assert "tiny-ov-fp32 is cached" in again["stats"]["backend_reason"]
