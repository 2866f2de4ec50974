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
