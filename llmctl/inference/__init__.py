"""Inference shared by `generate` and `serve`: backends (hf, openvino, llamacpp, vllm), one engine, prompts.

`llmctl.inference.backends` is the one table of backends and the `auto` rule; `engine.Engine` queues and
batches requests on any backend (continuous batching where the backend has it); `prompts` holds chat templating
and stop sequences; `sampling` the decoding settings and their OpenAI semantics.

Examples:
    backend = backends.create("hf", resolve_model("tiny"), BackendOptions())
    engine = Engine(backend); engine.start()
"""
