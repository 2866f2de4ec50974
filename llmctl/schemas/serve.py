"""Settings of `llmctl serve`."""

from llmctl.config.schema import Field, Section, device_field, dtype_field
from llmctl.schemas._rope import ROPE_RULES, rope_section

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
    shutdown_grace_s=Field(float, 30.0, "on SIGTERM, seconds in-flight requests get to finish", ge=0.0),
    threads=Field(int, 0, "CPU threads for inference; 0 = the backend's default (llamacpp: every core)", ge=0),
    device=device_field(),
    dtype=dtype_field("auto", "weights dtype (hf, vllm); auto = the checkpoint's own"),
    tensor_parallel_size=Field(int, 1, "vllm: GPUs one model is split over", ge=1),
    openvino_bits=Field(int, 8, "openvino: weight bits of the IR made once for a non-OpenVINO model", choices=[4, 8]),
    api_key_env=Field(str, None, "environment variable holding the API key; null = no key needed", nullable=True),
    json_logs=Field(bool, False, "log one JSON object per line"),
    rope=rope_section(),
)
