"""`llmctl serve`: an OpenAI-compatible HTTP server for registry models.

Examples:
    llmctl serve --model smollm2-135m-instruct
    llmctl serve --model smol-alpaca --backend openvino --port 8001 --api-key-env LLMCTL_API_KEY
    llmctl serve --model A --model B --served-name a --served-name b --max-concurrency 8 --json-logs
    llmctl serve --model smollm2-135m-instruct --host 0.0.0.0 --allowed-host llm.lan --api-key-env LLMCTL_API_KEY
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli._common import (
    DEFAULT_MODEL_NAME,
    ROPE_OPTIONS,
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    ModelsOpt,
    ProfileOpt,
    RopeFactorOpt,
    RopeOriginalOpt,
    RopeScalingOpt,
    SetOpt,
    resolve,
    schema_field,
    schema_options,
)
from llmctl.errors import UsageError

# Option → profile key: every value given here is checked by llmctl/schemas/serve.py.
OPTIONS = dict(ROPE_OPTIONS)  # every other option is named like its key (see schema_options)


@schema_options("serve", OPTIONS)
def serve(
    ctx: typer.Context,
    model: ModelsOpt = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Inference backend")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="Sequences generated together per model.")
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", help="Prompt + answer tokens at most.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Environment variable holding the API key (Bearer auth).")
    ] = None,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Host header name to answer besides localhost/127.0.0.1/[::1] (repeatable; DNS-rebinding guard).",
        ),
    ] = None,
    served_name: Annotated[
        list[str] | None, typer.Option("--served-name", help="Name clients use for the model (one per --model).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for inference (0 = default).")] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option("--tensor-parallel-size", help="vllm: GPUs one model is split over.")
    ] = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log one JSON object per line.")] = False,
    rope_scaling: RopeScalingOpt = None,
    rope_factor: RopeFactorOpt = None,
    rope_original_length: RopeOriginalOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Serve models over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models, /metrics), chat page at /.

    Examples:
        llmctl serve --model smollm2-135m-instruct --port 8000   # then open http://127.0.0.1:8000/ to chat
        curl localhost:8000/v1/chat/completions -H content-type:application/json \\
            -d '{"messages":[{"role":"user","content":"Hi"}]}'
    """
    from llmctl.serve.service import serve as run_serve

    hosts = schema_field("serve", "allowed_hosts")
    for name in allowed_hosts or []:  # one by one, so that the message names the bad one, not the last given
        if hosts.coerce([name])[1]:
            raise UsageError(f"--allowed-host {name}: must be {hosts.allowed()}")
    config = resolve(ctx, "serve", OPTIONS)
    run_serve(model or [DEFAULT_MODEL_NAME], served_name or [], config)
