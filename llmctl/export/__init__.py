"""Take a registry model to where people run models, and check it there (`llmctl export`).

- `targets`: the one table of export targets (writer, sources, parity reader, registry format, file or folder)
- `service`: `export()` (check the request, write, read back, compare, gate, put in place, register)
- `writers` / `readers`: one writer and one independent reader per target; `parity`: the comparison and gate
- `gguf_writer`, `gguf_tokenizer`, `gguf_lora`: llmctl's GGUF converter; `ollama`, `chat_templates`: Modelfiles

Examples:
    from llmctl.export.service import export
    from llmctl.export.gguf_writer import write_gguf, GGUF_TYPES
"""
