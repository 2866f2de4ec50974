"""neural-compressor weight-only folders (format `inc-woq`): INC's `save` layout, or auto-round's HF export.

INC's layout is `qconfig.json` + `quantized_weight.pt`; INC's own loader reads the weights with
`torch.load(weights_only=True)` (neural_compressor/torch/algorithms/weight_only/save_load.py), and so does
llmctl for the non-quantized rest, so no pickled code in the folder ever runs.

Examples:
    save(qmodel, tokenizer, Path("out"), act_order=True)
    model, tok = load("out", None, "cpu")
"""

from __future__ import annotations

import json
from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.runtime.quiet import stdout_to_stderr

WEIGHT_FILE = "quantized_weight.pt"


def empty_model(path: str):
    """The model architecture from config.json with uninitialized weights (filled by the loader)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    with no_init_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def save(qmodel, tokenizer, dest: Path, act_order: bool) -> None:
    """INC `save` plus config/tokenizer so the folder loads by itself."""
    with stdout_to_stderr():
        qmodel.save(str(dest))
    qcfg = Path(dest) / "qconfig.json"
    if act_order and qcfg.is_file():
        # INC's loader builds g_idx buffers only when a layer's config says desc_act (GPTQ's
        # name); its GPTQ config records act_order. Without this the channel order is lost on reload.
        data = json.loads(qcfg.read_text())
        for value in data.values():
            if isinstance(value, dict):
                for algo_cfg in value.values():
                    if isinstance(algo_cfg, dict) and "act_order" in algo_cfg:
                        algo_cfg["desc_act"] = bool(algo_cfg["act_order"])
        qcfg.write_text(json.dumps(data, indent=2))
    qmodel.config.save_pretrained(dest)
    if getattr(qmodel, "generation_config", None) is not None:
        qmodel.generation_config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _load_model(folder: Path):
    import torch
    from neural_compressor.torch.quantization import load as inc_load

    if not (folder / "qconfig.json").is_file():  # auto-round: an HF folder with its quantization_config
        from transformers import AutoModelForCausalLM

        with stdout_to_stderr():
            return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False)
    model = empty_model(str(folder))
    with stdout_to_stderr():
        qmodel = inc_load(str(folder), original_model=model)
    # INC loads the non-quantized weights itself only for AWQ/TEQ or meta models; load the rest here.
    state = torch.load(folder / WEIGHT_FILE, weights_only=True, map_location="cpu")
    missing = qmodel.load_state_dict(state, strict=False)
    leftover = [k for k in missing.missing_keys if not k.endswith("inv_freq")]
    if getattr(qmodel.config, "tie_word_embeddings", False):
        leftover = [k for k in leftover if k != "lm_head.weight"]
        qmodel.tie_weights()
    if leftover:
        raise LlmctlError(
            f"quantized weights in {folder} are incomplete (missing {leftover[0]})",
            hint="re-create the model with `llmctl quantize`",
        )
    from llmctl.models.formats.woq import exact_weights

    exact_weights(qmodel)  # INC's own dequantization rounds to float16 in a per-column Python loop
    return qmodel


def load(path: str, dtype, device: str):
    """(model, tokenizer) of an INC weight-only folder, through neural_compressor.torch.quantization.load."""
    from llmctl.models.formats.hf import check_folder, load_tokenizer

    folder = Path(path)
    check_folder(folder)
    try:
        model = _load_model(folder)
    except LlmctlError:
        raise
    except Exception as exc:
        raise LlmctlError(
            f"quantized weights in {folder} cannot be read ({first_line(exc)})",
            hint="the files are damaged or not INC's; re-create the model with `llmctl quantize`",
        ) from exc
    return model.to(device), load_tokenizer(str(folder))
