"""`llmctl serve`: an OpenAI-compatible HTTP server over llmctl's inference engine.

`protocol` (request shapes, validation, OpenAI's error shape), `guard` (transport: host, key, sizes, deadlines), `echo`
(prompt log-probabilities for `echo`), `app` (the Starlette routes: /v1/models,
/v1/completions, /v1/chat/completions, /health, /metrics), `metrics` (Prometheus), `service` (load models,
bind, uvicorn, graceful shutdown). Backends and batching live in `llmctl.inference`, shared with `generate`.

Examples:
    llmctl serve --model smollm2-135m-instruct --port 8000
"""
