"""Read a GGUF file back with an independent reader: llmctl's GGUF format module (llmctl/models/formats/gguf.py).

Kept for the names the GGUF export tests and scripts use; `load_gguf` is `llmctl.models.formats.gguf.read`.

Examples:
    meta = gguf_metadata(Path("m.gguf"))          # {"general.architecture": "llama", ...}
    model, tokenizer = load_gguf(Path("m.gguf"))  # a transformers model and tokenizer
"""

from llmctl.models.formats.gguf import gguf_metadata, gguf_tensor_types
from llmctl.models.formats.gguf import read as load_gguf

__all__ = ["gguf_metadata", "gguf_tensor_types", "load_gguf"]
