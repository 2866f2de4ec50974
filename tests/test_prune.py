"""prune: the papers' criteria on hand-computed cases, and the CLI on a tiny LLaMA."""

from __future__ import annotations

import json

import pytest

from conftest import _CORPUS

# ---- criteria, by hand -----------------------------------------------------------------------------


def test_wanda_scores_weight_times_input_norm_per_row():
    import torch

    from llmctl.prune.service import magnitude_prune, wanda_prune

    W = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    x_sq = torch.tensor([16.0, 1.0, 1.0, 1.0])  # ‖X_j‖ = 4, 1, 1, 1
    # row 0 scores 4, 2, 3, 4 → drop cols 1, 2; row 1 scores 16, 3, 2, 1 → drop cols 2, 3
    assert wanda_prune(W, x_sq, 0.5, None).tolist() == [[1.0, 0.0, 0.0, 4.0], [4.0, 3.0, 0.0, 0.0]]
    # magnitude: one threshold for the whole matrix → the four smallest |w| (1, 2, 2, 1) go
    assert magnitude_prune(W, 0.5, None).tolist() == [[0.0, 0.0, 3.0, 4.0], [4.0, 3.0, 0.0, 0.0]]


def test_nm_keeps_n_of_every_m():
    import torch

    from llmctl.prune.service import magnitude_prune, wanda_prune

    W = torch.tensor([[5.0, -1.0, 2.0, 0.5, 1.0, 2.0, 3.0, 4.0]])
    assert magnitude_prune(W, None, (2, 4)).tolist() == [[5.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]]
    x_sq = torch.tensor([1.0, 100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # column 1 matters ×10
    assert wanda_prune(W, x_sq, None, (2, 4)).tolist() == [[5.0, -1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]]


def test_sparsegpt_two_weights_matches_least_squares_update():
    """Pruning w1 of [w1, w2] with H = [[a, b], [b, c]]: the OBS update is w2 += w1·b/c."""
    import torch

    from llmctl.prune.service import sparsegpt_prune

    W = torch.tensor([[0.1, 2.0]])
    a, b, c = 4.0, 1.5, 2.0
    H = torch.tensor([[a, b], [b, c]])
    out = sparsegpt_prune(W, H, 0.5, None, blocksize=2, percdamp=1e-9)
    assert out[0, 0] == 0
    assert out[0, 1].item() == pytest.approx(2.0 + 0.1 * b / c, rel=1e-5)


def test_sparsegpt_equals_explicit_obs_recursion_and_beats_plain_masking():
    """Sequential OBS with explicit inverses of the remaining-column Hessian gives the same weights."""
    import torch

    from llmctl.prune.service import sparsegpt_prune

    torch.manual_seed(0)
    X = torch.randn(64, 8) @ torch.randn(8, 8)  # correlated inputs
    W = torch.randn(3, 8)
    H = X.t() @ X
    out = sparsegpt_prune(W, H, None, (2, 4), blocksize=8, percdamp=1e-6)
    mask = out == 0
    assert mask.reshape(3, 2, 4).sum(dim=2).eq(2).all()  # exactly 2 of every 4 pruned
    # explicit recursion with the same mask: at column i, F = columns i.., Hinv_F = inv(H[F, F])
    Hd = H + 1e-6 * torch.mean(torch.diag(H)) * torch.eye(8)
    ref = W.clone().double()
    for i in range(8):
        Hinv = torch.linalg.inv(Hd[i:, i:].double())
        err = torch.where(mask[:, i], ref[:, i], torch.zeros_like(ref[:, i]))
        ref[:, i:] -= (err / Hinv[0, 0]).unsqueeze(1) * Hinv[0].unsqueeze(0)
    ref[mask] = 0
    assert torch.allclose(out.double(), ref, atol=1e-4)
    plain = W.clone()
    plain[mask] = 0
    assert ((out - W) @ X.t()).norm() < ((plain - W) @ X.t()).norm()


# ---- CLI on the tiny LLaMA --------------------------------------------------------------------------


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(_CORPUS * 6), encoding="utf-8")
    return path


def _prune(cli, *args):
    return cli(
        "prune",
        "--model",
        "tiny",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--eval-tokens",
        "256",
        "--json",
        *args,
    )


@pytest.mark.parametrize(
    "method,extra,expect",
    [
        ("magnitude", ["--sparsity", "0.5"], 0.5),
        ("wanda", ["--sparsity", "0.5"], 0.5),
        ("sparsegpt", ["--sparsity", "0.5"], 0.5),
        ("wanda", ["--pattern", "2:4"], 0.5),
        ("sparsegpt", ["--pattern", "4:8"], 0.5),
        ("wanda", ["--pattern", "2:4", "--true-sequential"], 0.5),
    ],
)
def test_unstructured_and_nm(cli, tiny_model, calib_file, method, extra, expect):
    from llmctl.models.registry import Registry

    res = _prune(cli, "--method", method, "--calib-data", calib_file, "--name", "p", *extra)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["overall_sparsity"] == pytest.approx(expect, abs=0.01)
    assert set(out["per_layer_sparsity"]) == {"0", "1"}
    assert all(v == pytest.approx(expect, abs=0.02) for v in out["per_layer_sparsity"].values())
    assert out["perplexity_before"] > 1 and out["perplexity_after"] > 1
    entry = Registry().get("p")
    assert (
        entry.parents == ["tiny"] and entry.format == "hf" and entry.meta["overall_sparsity"] == out["overall_sparsity"]
    )
    gen = cli("generate", "--model", "p", "--prompt", "Hello", "--max-new-tokens", "3", "--json")
    assert gen.exit_code == 0, gen.stderr


@pytest.mark.parametrize("structure,ratio", [("heads", "0.5"), ("channels", "0.25")])
def test_structured_saves_smaller_model_that_reloads(cli, tiny_model, calib_file, structure, ratio):
    from transformers import AutoModelForCausalLM

    from llmctl.models.registry import Registry

    res = _prune(cli, "--structure", structure, "--ratio", ratio, "--calib-data", calib_file, "--name", "s")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["parameters_after"] < out["parameters_before"]
    model = AutoModelForCausalLM.from_pretrained(Registry().get("s").path)
    assert sum(p.numel() for p in model.parameters()) == out["parameters_after"]
    if structure == "heads":  # tiny: 4 query heads in 2 kv groups; half of each group goes
        assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (2, 2, 16)
        assert model.model.layers[0].self_attn.q_proj.out_features == 32
    else:
        assert model.config.intermediate_size == 96
        assert model.model.layers[1].mlp.down_proj.in_features == 96
    gen = cli("generate", "--model", "s", "--prompt", "Hello", "--max-new-tokens", "3", "--json")
    assert gen.exit_code == 0, gen.stderr


def test_head_group_mode_drops_whole_kv_groups(cli, tiny_model, calib_file):
    from transformers import AutoModelForCausalLM

    from llmctl.models.registry import Registry

    res = _prune(
        cli,
        "--structure",
        "heads",
        "--ratio",
        "0.5",
        "--set",
        "head_mode=group",
        "--calib-data",
        calib_file,
        "--name",
        "g",
    )
    assert res.exit_code == 0, res.stderr
    model = AutoModelForCausalLM.from_pretrained(Registry().get("g").path)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--method", "magnitude", "--sparsity", "1.0"],
            "Error: --sparsity 1.0: must be greater than 0 and less than 1",
        ),
        (["--method", "magnitude", "--sparsity", "0"], "Error: --sparsity 0: must be greater than 0 and less than 1"),
        (["--method", "magnitude", "--pattern", "4:2"], "Error: --pattern 4:2: must be N:M with 0 < N < M, e.g. 2:4"),
        (["--method", "magnitude", "--pattern", "half"], "Error: --pattern half: must be N:M with 0 < N < M, e.g. 2:4"),
        (
            ["--method", "magnitude", "--set", "pattern=4:2"],
            "Error: --set pattern=4:2: must be N:M with 0 < N < M, e.g. 2:4",
        ),
        (["--structure", "heads", "--ratio", "1"], "Error: --ratio 1: must be greater than 0 and less than 1"),
    ],
)
def test_bad_value_is_a_usage_error(cli, tiny_model, args, message):
    res = cli("prune", "--model", "tiny", "--name", "bad", *args)
    assert (res.exit_code, res.stderr) == (2, message + "\n")


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--structure", "heads", "--ratio", "0.9"],
            "Error: --ratio 0.9 would remove all 2 query heads of every kv group (4 heads, 2 kv heads)",
        ),
        (["--method", "wanda", "--sparsity", "0.5"], "Error: this method needs calibration data; pass --calib-data"),
        (
            ["--method", "magnitude"],
            "Error: give --sparsity (unstructured), --pattern N:M or --structure heads|channels",
        ),
        (
            ["--method", "magnitude", "--sparsity", "0.5", "--true-sequential"],
            "Error: --true-sequential applies to --method wanda or sparsegpt, not to magnitude pruning",
        ),
        (
            ["--structure", "channels", "--ratio", "0.5", "--true-sequential"],
            "Error: --true-sequential applies to --method wanda or sparsegpt, not to channels pruning",
        ),
    ],
)
def test_bad_input(cli, tiny_model, args, message):
    res = cli("prune", "--model", "tiny", "--name", "bad", *args)
    assert res.exit_code == 1, res.stdout
    assert res.stderr.startswith(message), res.stderr


def test_pruning_a_quantized_entry_is_refused(cli, tiny_model):
    res = cli("quantize", "--model", "tiny", "--algo", "rtn", "--bits", "8", "--name", "q8", "--eval-tokens", "0")
    assert res.exit_code == 0, res.stderr
    res = cli("prune", "--model", "q8", "--method", "magnitude", "--sparsity", "0.5", "--name", "x")
    assert res.exit_code == 1
    assert (
        "Error: q8 is already quantized (compressed-tensors rtn 8-bit); prune needs full weights; "
        "use its full-precision parent 'tiny' instead" in res.stderr
    )


def test_a_model_given_as_a_path_is_named_by_its_path(cli, tiny_llama_dir):
    """A folder that is not in the registry has no registry parent: the message names the folder, not None."""
    res = cli("prune", "--model", str(tiny_llama_dir), "--method", "magnitude", "--sparsity", "0.5", "--name", "m50")
    assert res.exit_code == 0, res.stderr
    assert f"from {tiny_llama_dir}: sparsity 50.0%" in " ".join(res.stderr.split())
