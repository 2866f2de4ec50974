"""OpenVINO IR folders (`llmctl quantize --backend openvino`), run by OpenVINO on CPU through optimum-intel.

Examples:
    model, tok = load("/m/smol-ov4", None, "cpu")
"""

from __future__ import annotations

from llmctl.errors import LlmctlError
from llmctl.runtime.quiet import stdout_to_stderr


def require_openvino() -> None:
    try:
        import openvino  # noqa: F401
        from optimum.intel import OVModelForCausalLM  # noqa: F401
    except ImportError as exc:
        raise LlmctlError(
            "the OpenVINO backend needs optimum-intel and openvino, which are not installed",
            hint="pip install 'llmctl[openvino]' (optimum-intel[openvino]==1.27.0)",
        ) from exc


def load(path: str, dtype, device: str):
    """The compiled OpenVINO model (generate/forward like a transformers model) and its tokenizer."""
    from llmctl.models.formats.hf import load_tokenizer

    require_openvino()
    from optimum.intel import OVModelForCausalLM

    with stdout_to_stderr():
        model = OVModelForCausalLM.from_pretrained(path, compile=True)
    return model, load_tokenizer(path)
