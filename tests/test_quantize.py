"""quantize: INC weight-only (saved as compressed-tensors, or INC's layout), int8, OpenVINO and bnb outputs load by
name; bad input is one clear line."""

from __future__ import annotations

import json

import pytest

from conftest import _CORPUS, write_jsonl


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(_CORPUS * 6), encoding="utf-8")
    return path


def _quant(cli, *args):
    return cli(
        "quantize",
        "--model",
        "tiny",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--eval-tokens",
        "256",
        "--group-size",
        "32",
        "--json",
        *args,
    )


@pytest.mark.parametrize("algo", ["rtn", "gptq", "awq", "teq"])
def test_inc_weight_only_roundtrip(cli, tiny_model, calib_file, algo):
    import torch

    from llmctl.models.loading import load_model
    from llmctl.models.registry import Registry

    res = _quant(
        cli,
        "--backend",
        "inc",
        "--algo",
        algo,
        "--bits",
        "4",
        "--calib-data",
        calib_file,
        "--name",
        f"t-{algo}",
        "--set",
        "teq.steps=2",
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["format"] == "compressed-tensors" and out["algo"] == algo and out["bits"] == 4
    assert out["layout"] == "compressed-tensors pack-quantized" and out["layout_group_size"] == 32
    assert out["perplexity_before"] > 1 and out["perplexity_after"] > 1
    entry = Registry().get(f"t-{algo}")
    assert (
        entry.parents == ["tiny"]
        and entry.meta["calib_samples"] == (0 if algo == "rtn" else 4)
        and entry.meta["size_mb"] > 0
    )
    assert "heldout.perplexity" in entry.metrics
    # generate / eval load it by name: same held-out perplexity as measured right after quantizing
    from llmctl.compress.calibration import held_out_perplexity, prepare_data

    loaded = load_model(f"t-{algo}", dtype="float32", device="cpu")
    # decompressed at load: the plain Linear layers of the fp32 parent, no quantization wrappers left
    down = loaded.model.model.layers[0].mlp.down_proj
    assert (
        type(down) is torch.nn.Linear
        and "forward" not in vars(down)
        and dict(down.named_parameters()).keys() == {"weight"}
    )
    data = prepare_data(loaded.tokenizer, str(calib_file), 4, 32, 0, None, 256, need_calib=True)
    assert held_out_perplexity(loaded.model, loaded.tokenizer, data.eval_text, 512) == pytest.approx(
        out["perplexity_after"], rel=1e-4
    )
    gen = cli("generate", "--model", f"t-{algo}", "--prompt", "Hello", "--max-new-tokens", "4", "--json")
    assert gen.exit_code == 0, gen.stderr
    assert json.loads(gen.stdout)["results"][0]["new_tokens"] >= 1


@pytest.mark.parametrize("algo", ["dynamic-int8", "smoothquant"])
def test_int8_roundtrip(cli, tiny_model, calib_file, algo):
    res = _quant(cli, "--algo", algo, "--bits", "8", "--calib-data", calib_file, "--name", f"t-{algo}")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["format"] == "inc-int8"
    # int8 W8A8 stays close to fp32 on this tiny model
    assert out["perplexity_after"] == pytest.approx(out["perplexity_before"], rel=0.05)
    gen = cli("generate", "--model", f"t-{algo}", "--prompt", "Hello", "--max-new-tokens", "3", "--json")
    assert gen.exit_code == 0, gen.stderr


def test_rtn_8bit_is_near_lossless_and_jsonl_calibration(cli, tiny_model, tmp_path):
    rows = [{"instruction": s, "output": s} for s in _CORPUS * 4]
    calib = write_jsonl(tmp_path / "calib.jsonl", rows)
    res = _quant(cli, "--algo", "rtn", "--bits", "8", "--calib-data", calib, "--name", "t-rtn8")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["perplexity_after"] == pytest.approx(out["perplexity_before"], rel=0.01)


@pytest.mark.parametrize("layout", ["compressed-tensors", "inc"])
def test_gptq_act_order_reload_matches_in_memory(tiny_model, calib_file, layout):
    """Both layouts keep act_order's channel order (INC's loader drops it unless desc_act is set; compressed-tensors
    needs `actorder: group` and g_idx): the reloaded model is the in-memory one, on exact float32 weights."""
    import torch

    from llmctl.compress.calibration import prepare_data
    from llmctl.config.profiles import resolve_config
    from llmctl.models.formats.woq import exact_weights
    from llmctl.models.loading import load_full_precision as load_source
    from llmctl.models.loading import load_model
    from llmctl.models.registry import Registry
    from llmctl.quantize import quantize
    from llmctl.quantize.inc import inc_weight_only

    cfg = resolve_config(
        "quantize",
        None,
        [
            "backend=inc",
            "algo=gptq",
            "group_size=32",
            "calib.samples=4",
            "calib.seqlen=32",
            f"calib.data={calib_file}",
            "eval.tokens=0",
            f"save_format={layout}",
        ],
        {},
    )
    quantize("tiny", "t-g", cfg)
    assert Registry().get("t-g").format == ("inc-woq" if layout == "inc" else "compressed-tensors")
    src = load_source("tiny")
    data = prepare_data(src.tokenizer, str(calib_file), 4, 32, 0, None, 0, need_calib=True)
    q = inc_weight_only(src.model, "gptq", cfg, data.windows)
    assert exact_weights(q) == 14
    assert q.model.layers[0].mlp.down_proj.g_idx is not None  # act-order: a channel order to keep
    x = data.windows[0]
    reloaded = load_model("t-g", dtype="float32", device="cpu").model
    with torch.no_grad():
        assert torch.allclose(q(x).logits, reloaded(x).logits, atol=1e-5)


@pytest.mark.parametrize("algo", ["rtn", "gptq", "awq"])
def test_llmctl_cores_are_the_default_and_reload_exactly(cli, tiny_model, calib_file, algo):
    """rtn/gptq/awq without --backend run on llmctl's cores; the compressed-tensors folder reloads as the
    in-memory quantized model (same logits), and --save-format inc picks neural-compressor instead."""
    import torch

    from llmctl.compress.calibration import prepare_data
    from llmctl.config.profiles import resolve_config
    from llmctl.models.loading import load_full_precision as load_source
    from llmctl.models.loading import load_model
    from llmctl.quantize.cores import quantize_with_cores

    out = _quant(cli, "--algo", algo, "--bits", "4", "--calib-data", calib_file, "--name", f"c-{algo}")
    assert out.exit_code == 0, out.stderr
    res = json.loads(out.stdout)
    assert (res["backend"], res["format"]) == ("llmctl", "compressed-tensors")
    assert res["quantized_layers"] == 14 and res["perplexity_after"] > 0
    cfg = resolve_config("quantize", None, [f"algo={algo}", "group_size=32"], {})
    src = load_source("tiny")
    data = prepare_data(src.tokenizer, str(calib_file), 4, 32, 0, None, 0, need_calib=True)
    layers = quantize_with_cores(src.model, algo, cfg, data.windows)
    assert len(layers) == 14 and all(q.codes.abs().max() <= 8 for q in layers.values())
    x = data.windows[0]
    reloaded = load_model(f"c-{algo}", dtype="float32", device="cpu").model
    with torch.no_grad():
        assert torch.allclose(src.model(x).logits, reloaded(x).logits, atol=1e-5)
    inc = _quant(
        cli,
        "--algo",
        algo,
        "--bits",
        "4",
        "--calib-data",
        calib_file,
        "--name",
        f"i-{algo}",
        "--save-format",
        "inc",
        "--eval-tokens",
        "0",
    )
    assert inc.exit_code == 0, inc.stderr
    assert (json.loads(inc.stdout)["backend"], json.loads(inc.stdout)["format"]) == ("inc", "inc-woq")


def test_llmctl_backend_refuses_what_only_inc_has(cli, tiny_model):
    res = cli("quantize", "--model", "tiny", "--backend", "llmctl", "--save-format", "inc", "--name", "x")
    assert (res.exit_code, res.stderr) == (
        2,
        "Error: save_format inc is neural-compressor's layout: use --backend "
        "inc (or leave --backend out); got --backend llmctl and --save-format inc\n",
    )
    res = cli("quantize", "--model", "tiny", "--backend", "llmctl", "--algo", "teq", "--name", "x")
    assert res.exit_code == 2 and "llmctl/rtn: 2,3,4,8; llmctl/gptq: 2,3,4,8; llmctl/awq: 2,3,4,8;" in res.stderr


def test_gptq_true_sequential_feeds_each_block_its_real_inputs(tiny_model, calib_file):
    """INC 3.10 overwrote a block's cached inputs after each true-sequential group (block applied 5x)."""
    import torch

    from llmctl.compress.calibration import prepare_data
    from llmctl.config.profiles import resolve_config
    from llmctl.models.loading import load_full_precision as load_source
    from llmctl.quantize.inc import inc_weight_only

    cfg = resolve_config("quantize", None, ["algo=gptq", "group_size=32", "gptq.true_sequential=true"], {})
    src = load_source("tiny")
    data = prepare_data(src.tokenizer, str(calib_file), 4, 32, 0, None, 0, need_calib=True)
    seen = []
    hook = src.model.model.layers[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    q = inc_weight_only(src.model, "gptq", cfg, data.windows)
    hook.remove()
    real = []
    hook = q.model.layers[1].register_forward_pre_hook(lambda mod, args: real.append(args[0].clone()))
    with torch.no_grad():
        q(data.windows[0])
    hook.remove()
    # block 1's first calibration input is block 0's (fully quantized) output for window 0, applied once
    assert torch.allclose(seen[0], real[0], atol=1e-5)


def test_awq_replays_blocks_without_a_kv_cache(tiny_model, calib_file):
    """INC AWQ replays captured decoder-layer kwargs; a captured DynamicCache grew on every replay."""
    from llmctl.compress.calibration import prepare_data
    from llmctl.config.profiles import resolve_config
    from llmctl.models.loading import load_full_precision as load_source
    from llmctl.quantize.inc import inc_weight_only

    cfg = resolve_config("quantize", None, ["algo=awq", "group_size=32"], {})
    src = load_source("tiny")
    data = prepare_data(src.tokenizer, str(calib_file), 4, 32, 0, None, 0, need_calib=True)
    caches = []
    hook = src.model.model.layers[1].register_forward_pre_hook(
        lambda mod, args, kwargs: caches.append(kwargs.get("past_key_values")), with_kwargs=True
    )
    inc_weight_only(src.model, "awq", cfg, data.windows)
    hook.remove()
    assert caches and all(c is None for c in caches)


def test_block_inputs_take_outputs_after_every_group_wrote():
    from llmctl.quantize.inc_patches import _BlockInputs

    cache = _BlockInputs(["x0", "x1"], groups=2)
    cache[0], cache[1] = "a0", "a1"  # group 1 of 2: reads still give the block inputs
    assert list(cache) == ["x0", "x1"]
    cache[0], cache[1] = "b0", "b1"  # last group: its outputs become the next block's inputs
    assert list(cache) == ["b0", "b1"]


def test_quant_groups_split_columns_like_inc():
    import torch
    from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor

    from llmctl.quantize.inc_patches import quant_groups

    assert quant_groups(576, 128) == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 576)]
    assert quant_groups(96, -1) == [(0, 96)] and quant_groups(48, 64) == [(0, 48)]
    w = torch.randn(8, 96)
    whole = quant_tensor(w.clone(), bits=4, group_size=64, scheme="sym")
    parts = torch.cat(
        [quant_tensor(w[:, a:b].clone(), bits=4, group_size=-1, scheme="sym") for a, b in quant_groups(96, 64)], dim=1
    )
    assert torch.equal(whole, parts)


def test_awq_clip_maxima_minimize_each_rows_output_error():
    import torch
    from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor

    from llmctl.quantize.inc_patches import AWQ_CLIP_GRID, awq_clip_maxima, quant_groups

    torch.manual_seed(0)
    w = torch.randn(16, 96)
    w[:, 5] *= 8  # an outlier column: clipping it should pay off somewhere
    x = torch.randn(200, 96) * torch.linspace(0.2, 2.0, 96)
    quant = lambda t: quant_tensor(t, bits=4, group_size=64, scheme="sym")  # noqa: E731
    maxima = awq_clip_maxima(w, x.T @ x, quant, 64)
    spans = quant_groups(96, 64)
    top = torch.stack([w[:, a:b].abs().amax(1) for a, b in spans], 1)
    assert maxima.shape == (16, 2) and bool((maxima <= top).all()) and bool((maxima >= top * 0.5).all())

    def row_errors(m):  # output error per row and group, from the tokens themselves
        clipped = torch.cat([w[:, a:b].clamp(-m[:, j : j + 1], m[:, j : j + 1]) for j, (a, b) in enumerate(spans)], 1)
        d = w - quant(clipped.clone())
        return torch.stack([(x[:, a:b] @ d[:, a:b].T).pow(2).sum(0) for a, b in spans], 1)

    chosen = row_errors(maxima)
    for step in range(AWQ_CLIP_GRID // 2):  # no candidate on the grid does better for any row and group
        assert bool((chosen <= row_errors(top * (1 - step / AWQ_CLIP_GRID)) * (1 + 1e-4) + 1e-6).all())
    assert chosen.sum() < row_errors(top).sum()


def test_awq_clip_search_sees_the_scaled_inputs():
    """After AWQ scales a layer by s (W·s, inputs x/s), the clip search must weigh errors by x/s, not x."""
    import types

    import torch
    from neural_compressor.torch.algorithms.weight_only.awq import ActAwareWeightQuant
    from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor

    from llmctl.quantize.inc_patches import awq_clip_maxima, awq_fixes

    torch.manual_seed(0)
    block = torch.nn.Module()
    block.up_proj = torch.nn.Linear(64, 8, bias=False)
    model = torch.nn.Module()
    model.block = block
    original = block.up_proj.weight.detach().clone()
    x = torch.randn(2, 10, 64)
    s = torch.linspace(0.25, 4.0, 64)
    fake = types.SimpleNamespace(
        model=model,
        weight_config={},
        bits=4,
        group_size=32,
        scheme="sym",
        data_type="int",
        use_full_range=False,
        _llmctl_scales={("block.up_proj",): s},
    )
    with awq_fixes():
        ActAwareWeightQuant.search_clip(fake, "block", [("block.up_proj",)], {"up_proj": {"input": [x]}})
    xs = x.reshape(-1, 64) / s
    m = awq_clip_maxima(original, xs.T @ xs, lambda t: quant_tensor(t, bits=4, group_size=32, scheme="sym"), 32)
    expected = torch.cat([original[:, :32].clamp(-m[:, :1], m[:, :1]), original[:, 32:].clamp(-m[:, 1:], m[:, 1:])], 1)
    assert torch.equal(block.up_proj.weight.detach(), expected)
    assert fake.weight_config["block.up_proj"]["quantile"] == 1.0  # INC's final RTN adds no clip of its own


def test_bad_bits_for_algo_lists_supported(cli, tiny_model):
    """The combination table is a schema rule: exit 2 before anything loads, every supported combination listed."""
    table = (
        "Error: backend, algorithm and bits must be a supported combination (llmctl/rtn: 2,3,4,8; "
        "llmctl/gptq: 2,3,4,8; llmctl/awq: 2,3,4,8; inc/rtn: 2,3,4,8; inc/gptq: 2,3,4,8; "
        "inc/awq: 2,3,4,8; inc/teq: 2,3,4,8; inc/autoround: 2,3,4,8; inc/smoothquant: 8; inc/dynamic-int8: 8; "
        "openvino/weight-compression: 4,8; bnb/nf4: 4; bnb/fp4: 4; bnb/int8: 8); got "
    )
    res = cli("quantize", "--model", "tiny", "--algo", "smoothquant", "--bits", "4", "--name", "x")
    assert (res.exit_code, res.stderr) == (2, table + "backend null (default) and --algo smoothquant and --bits 4\n")
    res = cli("quantize", "--model", "tiny", "--backend", "openvino", "--bits", "3", "--name", "x")
    assert (res.exit_code, res.stderr) == (2, table + "--backend openvino and algo null (default) and --bits 3\n")
    res = cli("quantize", "--model", "tiny", "--algo", "hqq", "--name", "x")
    assert res.exit_code == 2 and res.stderr.startswith("Error: --algo hqq: must be one of autoround, awq,")


def test_calibration_missing_or_short(cli, tiny_model, tmp_path, calib_file):
    res = cli("quantize", "--model", "tiny", "--algo", "gptq", "--calib-data", tmp_path / "nope.txt", "--name", "x")
    assert res.exit_code == 1
    assert "Error: calibration data" in res.stderr and "nope.txt not found" in res.stderr
    res = cli("quantize", "--model", "tiny", "--algo", "gptq", "--name", "x")
    assert res.exit_code == 1 and "Error: this method needs calibration data; pass --calib-data" in res.stderr
    short = tmp_path / "short.txt"
    short.write_text("just a few words here", encoding="utf-8")
    res = cli(
        "quantize",
        "--model",
        "tiny",
        "--algo",
        "gptq",
        "--calib-data",
        short,
        "--name",
        "x",
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "64",
        "--eval-tokens",
        "0",
    )
    assert res.exit_code == 1
    assert "fewer than the 8 × 64 = 512 asked for; give a longer file" in res.stderr
    res = cli(
        "quantize",
        "--model",
        "tiny",
        "--algo",
        "gptq",
        "--calib-data",
        calib_file,
        "--name",
        "x",
        "--calib-samples",
        "400",
        "--calib-seqlen",
        "64",
    )
    assert res.exit_code == 1 and "plus 8192 held-out tokens" in res.stderr


def test_requantizing_a_quantized_entry_says_what_it_is(cli, tiny_model):
    res = cli("quantize", "--model", "tiny", "--algo", "rtn", "--bits", "8", "--name", "q8", "--eval-tokens", "0")
    assert res.exit_code == 0, res.stderr
    res = cli("quantize", "--model", "q8", "--algo", "rtn", "--name", "q8q")
    assert res.exit_code == 1
    assert res.stderr.strip() == (
        "Error: q8 is already quantized (compressed-tensors rtn 8-bit); quantize needs full "
        "weights; use its full-precision parent 'tiny' instead"
    )


def test_name_taken_and_dry_run(cli, tiny_model):
    res = cli("quantize", "--model", "tiny", "--name", "tiny")
    assert res.exit_code == 1 and "model 'tiny' already exists" in res.stderr
    res = cli("quantize", "--model", "tiny", "--name", "z", "--algo", "gptq", "--bits", "3", "--dry-run", "--json")
    assert res.exit_code == 0
    cfg = json.loads(res.stdout)
    assert cfg["algo"] == "gptq" and cfg["bits"] == 3 and cfg["gptq"]["block_size"] == 128


def test_openvino_missing_says_how_to_install(cli, tiny_model, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("openvino") or name.startswith("optimum"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    res = cli("quantize", "--model", "tiny", "--backend", "openvino", "--bits", "8", "--name", "ov")
    assert res.exit_code == 1
    assert res.stderr.strip() == (
        "Error: the OpenVINO backend needs optimum-intel and openvino, which are not "
        "installed; pip install 'llmctl[openvino]' (optimum-intel[openvino]==1.27.0)"
    )


def _fake_ppl(monkeypatch, values):
    """Held-out perplexities in call order: the first is the full-precision baseline."""
    import llmctl.compress.calibration

    seq = iter(values)
    monkeypatch.setattr(llmctl.compress.calibration, "held_out_perplexity", lambda *a, **k: next(seq))


def test_accuracy_aware_reports_trials_and_registers_first_within_loss(cli, tiny_model, calib_file, monkeypatch):
    from llmctl.models.registry import Registry

    _fake_ppl(monkeypatch, [10.0, 12.0, 10.5, 10.05, 9.0])
    res = _quant(
        cli,
        "--algo",
        "gptq",
        "--bits",
        "4",
        "--calib-data",
        calib_file,
        "--name",
        "tuned",
        "--max-loss",
        "0.01",
        "--max-trials",
        "10",
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [(t["label"], t["perplexity"], t["ok"]) for t in out["trials"]] == [
        ("gptq 4-bit sym g32", 12.0, False),
        ("gptq 4-bit asym g32", 10.5, False),
        ("awq 4-bit asym g32", 10.05, True),
    ]
    assert out["relative_ppl_increase"] == 0.005 and out["perplexity_before"] == 10.0
    entry = Registry().get("tuned")
    assert (entry.format, entry.meta["algo"], entry.meta["sym"], entry.parents) == (
        "compressed-tensors",
        "awq",
        False,
        ["tiny"],
    )
    from llmctl.models.loading import load_model

    assert type(load_model("tuned", "float32", "cpu").model.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    gen = cli("generate", "--model", "tuned", "--prompt", "Hi", "--max-new-tokens", "2", "--json")
    assert gen.exit_code == 0, gen.stderr


def test_accuracy_aware_gives_up_with_exit_3(cli, tiny_model, calib_file, monkeypatch):
    from llmctl.models.registry import Registry

    _fake_ppl(monkeypatch, [10.0, 11.0, 10.2])
    res = _quant(
        cli,
        "--algo",
        "rtn",
        "--bits",
        "2",
        "--calib-data",
        calib_file,
        "--name",
        "t2",
        "--max-loss",
        "0.01",
        "--max-trials",
        "2",
    )
    assert res.exit_code == 3
    assert res.stderr.strip() == (
        "Error: no configuration within --max-loss 1.00% after 2 trials (rtn 2-bit sym g32 "
        "+10.00%, rtn 2-bit asym g32 +2.00%); raise --max-loss or --max-trials, or give "
        "more calibration data"
    )
    assert Registry().find("t2") is None


def test_accuracy_aware_real_search_on_tiny(cli, tiny_model, calib_file):
    """No fakes: each trial's reported perplexity is the quantized model's; the first one within loss is kept."""
    res = _quant(
        cli,
        "--algo",
        "rtn",
        "--bits",
        "4",
        "--calib-data",
        calib_file,
        "--name",
        "real",
        "--max-loss",
        "0.05",
        "--max-trials",
        "3",
    )
    # On the tiny random model 4-bit RTN g32 moves perplexity by far less than 5 %: the first trial is kept.
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [(t["label"], t["ok"]) for t in out["trials"]] == [("rtn 4-bit sym g32", True)]
    assert out["perplexity_after"] == out["trials"][0]["perplexity"]
    assert out["perplexity_after"] <= out["perplexity_before"] * 1.05
    from llmctl.models.registry import Registry

    assert Registry().get("real").meta["algo"] == "rtn"


def test_candidates_go_from_asked_to_safer():
    from llmctl.config.profiles import resolve_config
    from llmctl.quantize.tune import candidates, label

    cfg = resolve_config("quantize", None, ["algo=gptq"], {})
    labels = [label(c) for c in candidates(cfg)]
    assert labels[:4] == ["gptq 4-bit sym g128", "gptq 4-bit asym g128", "gptq 4-bit asym g64", "gptq 4-bit asym g32"]
    assert labels[-1] == "rtn 8-bit sym per-channel" and len(labels) == len(set(labels))


@pytest.mark.parametrize("bits,extra", [("8", []), ("4", ["--awq", "--scale-estimation"])])
def test_openvino_roundtrip(cli, tiny_model, calib_file, bits, extra):
    pytest.importorskip("optimum.intel")
    from llmctl.models.registry import Registry

    args = ["--backend", "openvino", "--bits", bits, "--calib-data", calib_file, "--name", f"ov{bits}", *extra]
    # NNCF's progress bars keep the stdout of the first in-process runner that used NNCF (another test's, in a
    # whole-suite run): a real process, as users run it
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("llmctl")),
            "quantize",
            "--model",
            "tiny",
            "--calib-samples",
            "4",
            "--calib-seqlen",
            "32",
            "--eval-tokens",
            "256",
            "--group-size",
            "32",
            "--json",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "openvino" and out["algo"] == "weight-compression"
    assert out["perplexity_after"] == pytest.approx(out["perplexity_before"], rel=0.1)
    entry = Registry().get(f"ov{bits}")
    assert (Registry().model_dir(f"ov{bits}") / "openvino_model.xml").is_file()
    assert entry.meta["openvino"]["awq"] == bool(extra)
    gen = cli("generate", "--model", f"ov{bits}", "--prompt", "Hello", "--max-new-tokens", "3", "--json")
    assert gen.exit_code == 0, gen.stderr
    assert json.loads(gen.stdout)["results"][0]["new_tokens"] >= 1


@pytest.mark.parametrize("bits,algo", [("4", "nf4"), ("8", "int8")])
def test_bnb_roundtrip(cli, tiny_model, calib_file, bits, algo):
    res = _quant(cli, "--backend", "bnb", "--bits", bits, "--calib-data", calib_file, "--name", f"bnb{bits}")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["format"] == "bnb" and out["algo"] == algo
    assert out["perplexity_after"] == pytest.approx(out["perplexity_before"], rel=0.1)
    from llmctl.models.loading import load_model

    loaded = load_model(f"bnb{bits}", dtype="float32", device="cpu")
    assert "bitsandbytes" in type(loaded.model.model.layers[0].mlp.down_proj).__module__
    gen = cli("generate", "--model", f"bnb{bits}", "--prompt", "Hello", "--max-new-tokens", "3", "--json")
    assert gen.exit_code == 0, gen.stderr


def test_gptq_grid_matches_rtn_and_keeps_the_largest_weight():
    """INC's GPTQ sym grid clips +max|w| to 14/15 of it at 4 bits; with rtn_grid it is exact, as in RTN."""
    import torch
    from neural_compressor.torch.algorithms.weight_only.gptq import Quantizer

    from llmctl.quantize.inc_patches import gptq_rtn_grid

    w = torch.tensor([[0.7, -0.3, 0.1, 0.0]])
    cfg = {
        "bits": 4,
        "sym": True,
        "dtype": "int",
        "double_quant_sym": False,
        "use_double_quant": False,
        "perchannel": True,
        "mse": False,
        "group_size": -1,
    }

    def qdq(enabled):
        q = Quantizer()
        q.configure(cfg)
        with gptq_rtn_grid(enabled):
            q.find_params(w, weight=True)
        return q.quantize(w, q.scale, q.zero, q.maxq)

    assert qdq(False)[0, 0].item() == pytest.approx(0.7 * 14 / 15)
    assert qdq(True)[0, 0].item() == pytest.approx(0.7)
    assert qdq(True)[0, 1].item() == pytest.approx(-0.3)  # 0.3 = 3 steps of 0.1


def test_autoround_roundtrip(cli, tiny_model, calib_file):
    pytest.importorskip("auto_round")
    res = _quant(
        cli,
        "--algo",
        "autoround",
        "--bits",
        "4",
        "--calib-data",
        calib_file,
        "--name",
        "ar",
        "--set",
        "autoround.iters=2",
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["format"] == "inc-woq" and out["algo"] == "autoround"
    from llmctl.models.loading import load_model

    loaded = load_model("ar", dtype="float32", device="cpu")
    assert "QuantLinear" in type(loaded.model.model.layers[0].mlp.down_proj).__name__
    gen = cli("generate", "--model", "ar", "--prompt", "Hello", "--max-new-tokens", "3", "--json")
    assert gen.exit_code == 0, gen.stderr


def test_awq_clips_linears_outside_every_scale_tuple():
    """A linear no scale is searched for (o_proj under GQA) still gets the clip search, on its own inputs; q too."""
    import types

    import torch
    from neural_compressor.torch.algorithms.weight_only.awq import ActAwareWeightQuant
    from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor

    from llmctl.quantize.inc_patches import awq_clip_maxima, awq_fixes, clamp_groups, quant_groups

    torch.manual_seed(0)
    block = torch.nn.Module()
    block.q_proj, block.o_proj = torch.nn.Linear(32, 32, bias=False), torch.nn.Linear(32, 8, bias=False)
    model = torch.nn.Module()
    model.block = block
    x = torch.randn(2, 10, 32)
    o_inputs = block.q_proj(x).detach().reshape(-1, 32)
    original = block.o_proj.weight.detach().clone()
    fake = types.SimpleNamespace(
        model=model,
        weight_config={},
        bits=4,
        group_size=16,
        scheme="sym",
        data_type="int",
        use_full_range=False,
        block_inference=lambda b: [b.o_proj(b.q_proj(x))],
    )
    with awq_fixes():  # no scale tuples at all: both linears are "loose"
        assert ActAwareWeightQuant.search_scale(fake, block, "block", [], {}) == {}
        ActAwareWeightQuant.search_clip(fake, "block", [], {})
    m = awq_clip_maxima(
        original, o_inputs.T @ o_inputs, lambda t: quant_tensor(t, bits=4, group_size=16, scheme="sym"), 16
    )
    assert torch.equal(block.o_proj.weight.detach(), clamp_groups(original, m, quant_groups(32, 16)))
    assert not torch.equal(block.o_proj.weight.detach(), original)
    assert fake.weight_config["block.o_proj"]["quantile"] == 1.0 == fake.weight_config["block.q_proj"]["quantile"]


def test_awq_reports_each_block(tiny_llama_dir):
    """AWQ runs for minutes on a real model: quantize's progress hears every decoder block."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.config.profiles import resolve_config
    from llmctl.quantize.inc import inc_weight_only

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()
    cfg = resolve_config("quantize", None, ["algo=awq", "bits=4", "group_size=32"], {})
    heard: list[str] = []
    torch.manual_seed(0)
    inc_weight_only(model, "awq", cfg, [torch.randint(0, 50, (1, 16)) for _ in range(2)], heard.append)
    assert heard == ["AWQ block 1/2", "AWQ block 2/2"]


def test_teq_reports_its_training_steps(tiny_llama_dir):
    """TEQ trains the whole model at once: progress counts its steps (about ten lines) with an ETA, then the total."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.config.profiles import resolve_config
    from llmctl.quantize.inc import inc_weight_only

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()
    cfg = resolve_config("quantize", None, ["algo=teq", "bits=4", "group_size=32", "teq.steps=20"], {})
    heard: list[str] = []
    torch.manual_seed(0)
    inc_weight_only(model, "teq", cfg, [torch.randint(0, 50, (1, 16)) for _ in range(2)], heard.append)
    steps = [line.split(" · ")[0] for line in heard[:-1]]
    assert steps == [f"teq: step {i}/20" for i in range(1, 21, 2)]
    assert "ETA" in heard[1] and "ETA" not in heard[0]
    assert heard[-1].startswith("teq: 20 steps in ")


def test_parent_perplexity_is_remembered_per_weights_and_text(tiny_model, calib_file):
    """The second compression of the same parent on the same held-out text reuses its perplexity; new weights don't."""
    import os
    from pathlib import Path

    from llmctl.config.profiles import resolve_config
    from llmctl.models.registry import Registry
    from llmctl.quantize import quantize

    sets = ["algo=rtn", "bits=8", "group_size=32", f"calib.data={calib_file}", "eval.tokens=256"]

    def run(name):
        said = []
        out = quantize("tiny", name, resolve_config("quantize", None, sets, {}), progress=said.append)
        return out["perplexity_before"], " ".join(said)

    first, log1 = run("r1")
    second, log2 = run("r2")
    assert "remembered" not in log1 and "remembered" in log2 and second == first
    for weights in Path(Registry().get("tiny").path).glob("*.safetensors"):
        st = weights.stat()
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third, log3 = run("r3")
    assert "remembered" not in log3 and third == pytest.approx(first, rel=1e-6)
