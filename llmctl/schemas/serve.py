"""Settings of `llmctl serve`."""

import re

from llmctl.config.schema import Field, Section, device_field, dtype_field
from llmctl.schemas._rope import ROPE_RULES, rope_section

# a host name or IP address (IPv6 bare or in brackets), an optional :port (ignored): no "*", no scheme, no path
_HOST = re.compile(r"[A-Za-z0-9_.-]+(:[0-9]*)?|\[[0-9A-Fa-f:.]+\](:[0-9]*)?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")

# the backend names of llmctl.inference.backends (kept here as data so the schema imports nothing heavy;
# tests/test_serve.py checks the two lists agree)
BACKENDS = ["auto", "hf", "openvino", "llamacpp", "vllm"]

SCHEMA = Section(
    rules=ROPE_RULES,
    host=Field(str, "127.0.0.1", "address to listen on; 0.0.0.0 exposes the server to the network"),
    port=Field(int, 8000, "TCP port; 0 = any free port (the log says which)", ge=0, le=65535),
    backend=Field(str, "auto", "inference backend; auto = the fastest that fits the model here", choices=BACKENDS),
    max_concurrency=Field(int, 16, "sequences generated together per model (batch slots)", ge=1),
    max_queue=Field(int, 1024, "sequences waiting for a slot at most; beyond that requests get 503", ge=1),
    max_model_len=Field(
        int, None, "prompt + answer tokens at most; null = the model's context length", nullable=True, ge=16
    ),
    default_max_tokens=Field(
        int, 256, "answer tokens when a request gives no max_tokens (capped by the room left)", ge=1
    ),
    max_request_bytes=Field(int, 1048576, "request bodies over this many bytes get 413", ge=1024),
    max_sequences_per_request=Field(
        int, 64, "prompts x n of one request at most (more is a 400): one request cannot fill the queue", ge=1
    ),
    max_request_tokens=Field(
        int, 262144, "prompt + max_tokens over a request's sequences at most (more is a 400)", ge=16
    ),
    max_queue_tokens=Field(
        int, 1048576, "prompt tokens waiting for a slot at most; beyond that requests get 503", ge=16
    ),
    shutdown_grace_s=Field(
        float, 30.0, "on SIGTERM or an engine's failure, seconds in-flight requests get to finish", ge=0.0
    ),
    allowed_hosts=Field(
        list,
        [],
        "Host header names answered besides localhost/127.0.0.1/[::1] (browser DNS-rebinding guard); "
        "bound to a loopback address other names get 403; bound elsewhere the check applies only when names are given",
        item=str,
        check=lambda hosts: all(_HOST.fullmatch(h) for h in hosts),
        rule="host names or IP addresses, e.g. myserver.lan",
    ),
    # Node.js's default (16 KiB): API keys and cookies fit many times over; h11 refuses a header block still
    # arriving past it (400 and a close), the guard one that arrived whole (431)
    max_header_bytes=Field(int, 16384, "request line + headers at most; larger get 431", ge=1024, le=1048576),
    # long enough for a 1 MiB body over a slow link (~35 KB/s), short enough that stalled clients free their place
    read_timeout_s=Field(
        float, 30.0, "seconds a client has to send a request's headers, and then its body (else 408)", gt=0.0
    ),
    # uvicorn's own default: a client that reuses its connection does so at once; idle ones hold a place
    keep_alive_s=Field(float, 5.0, "seconds an idle keep-alive connection stays open", gt=0.0),
    # uvicorn's limit_concurrency: a request gets 503 while this many connections are open (its own counted) or
    # this many requests are in flight; it bounds memory and file descriptors (often 1,024 a process) under a flood
    max_connections=Field(
        int,
        None,
        "open connections at most, then requests get 503; null = 4 x max_concurrency per model + 64 "
        "(one per running sequence, room for waiting and idle ones, /health and /metrics)",
        nullable=True,
        ge=1,
    ),
    threads=Field(int, 0, "CPU threads for inference; 0 = the backend's default (llamacpp: every core)", ge=0),
    device=device_field(),
    dtype=dtype_field("auto", "weights dtype (hf, vllm); auto = the checkpoint's own"),
    tensor_parallel_size=Field(int, 1, "vllm: GPUs one model is split over", ge=1),
    openvino_bits=Field(
        int,
        8,
        "openvino: weight bits of the IR made once for a non-OpenVINO model (32: fp32, unchanged)",
        choices=[4, 8, 32],
    ),
    api_key_env=Field(str, None, "environment variable holding the API key; null = no key needed", nullable=True),
    json_logs=Field(bool, False, "log one JSON object per line"),
    rope=rope_section(),
)
