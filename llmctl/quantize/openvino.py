"""OpenVINO export with NNCF weight compression (int8 per channel, int4 grouped, AWQ, scale estimation).

Examples:
    openvino_compress(hf_dir, dest, config, calib_texts)
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.models.formats.openvino import require_openvino
from llmctl.runtime.quiet import stdout_to_stderr


def nncf_logs_to_stderr() -> None:
    """NNCF logs its tables to stdout through its own StreamHandler; stdout is for results (`--json`).

    Only that handler (exactly a StreamHandler) is moved: the nncf logger may also hold handlers others put
    there (pytest's log capture copies itself onto it), whose streams are not ours to change.
    """
    import logging

    for handler in logging.getLogger("nncf").handlers:
        if type(handler) is logging.StreamHandler:
            handler.stream = sys.stderr  # (setStream would flush a stream that may be closed)


def openvino_compress(src_dir: str, dest: Path, cfg: dict, calib_texts: list[str] | None) -> None:
    """Export to OpenVINO IR with NNCF weight compression (int8 per-channel, int4 grouped, AWQ, scale estimation)."""
    require_openvino()
    import logging

    import nncf
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    nncf.set_log_level(logging.WARNING)
    nncf_logs_to_stderr()
    ov = cfg["openvino"]
    kwargs = dict(bits=cfg["bits"], sym=cfg["sym"])
    if cfg["bits"] == 4:
        # "adjust": a layer whose inputs the group size does not divide (576 = 4.5 × 128 on the default
        # model) gets the largest group that fits, instead of NNCF refusing the whole model
        kwargs.update(group_size=cfg["group_size"], ratio=ov["ratio"], group_size_fallback="adjust")
        if ov["awq"] or ov["scale_estimation"]:
            if not calib_texts:
                raise LlmctlError("--awq and --scale-estimation need calibration data", hint="pass --calib-data FILE")
            kwargs.update(
                dataset=calib_texts,
                tokenizer=src_dir,
                num_samples=len(calib_texts),
                scale_estimation=ov["scale_estimation"],
            )
            if ov["awq"]:
                kwargs["quant_method"] = "awq"
    qc = OVWeightQuantizationConfig(**kwargs)
    import warnings

    import torch

    with stdout_to_stderr(), warnings.catch_warnings():
        # the export traces the model once; its TracerWarnings are about shapes the IR keeps dynamic anyway
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = OVModelForCausalLM.from_pretrained(src_dir, export=True, quantization_config=qc, compile=False)
        model.save_pretrained(dest)


def openvino_export_fp32(src_dir: str, dest: Path) -> None:
    """Export an HF folder to OpenVINO IR with its weights unchanged (fp32 constants, no NNCF compression).

    Examples:
        openvino_export_fp32("/models/smol", Path("/tmp/smol-ov"))
    """
    require_openvino()
    import warnings

    import torch
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    nncf_logs_to_stderr()
    with stdout_to_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes the IR keeps dynamic anyway
        # ov_config dtype fp32: no fp16 constants and no automatic int8 (optimum compresses models > 1B
        # parameters by default when ov_config is None)
        main_export(src_dir, output=dest, task="text-generation-with-past", ov_config=OVConfig(dtype="fp32"))
