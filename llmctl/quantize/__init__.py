"""`llmctl quantize`, split along its concepts.

- `support`: the backend/algorithm/bits table and the full-precision source model
- `inc`: neural-compressor configs and prepare/convert; `inc_patches`: the INC 3.10 GPTQ/AWQ fixes
- `smoothquant`: W8A8 smoothing; `openvino`: NNCF export; `tune`: accuracy-aware trials
- `service`: the `quantize()` orchestration (load, calibrate, quantize, score, publish)

Examples:
    from llmctl.quantize import quantize
    quantize("smollm2-135m-instruct", "smol-rtn4", resolve_config("quantize", sets=["algo=rtn"]))
"""

from llmctl.quantize.service import quantize

__all__ = ["quantize"]
