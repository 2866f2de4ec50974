"""llmctl: one command-line toolkit for the whole life of a language model.

Examples:
    llmctl models list
    llmctl generate --model smollm2-135m-instruct --prompt "Hello"
"""

import os as _os

__version__ = "0.1.0"

# Offline first: nothing reaches a hub unless the user opts in with LLMCTL_ALLOW_NETWORK=1.
# Set before huggingface_hub/transformers/datasets are imported, since they read these at import.
if _os.environ.get("LLMCTL_ALLOW_NETWORK", "") not in ("1", "true", "yes"):
    for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        _os.environ.setdefault(_var, "1")
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # library chatter would drown our stderr
# neural-compressor reads LOGLEVEL once at import; peft imports it even for plain LoRA (set LOGLEVEL=INFO to see it).
_os.environ.setdefault("LOGLEVEL", "ERROR")

# bitsandbytes tries to fetch a CPU 4-bit kernel from the hub at import and warns when it cannot; offline
# that always fails and its fallback kernel works, so the warning is noise on every peft import.
import logging as _logging

_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

from llmctl.runtime import lean_imports as _lean_imports  # noqa: E402 (after the environment above, as it must be)

_lean_imports.install()
