"""`llmctl eval --base-url URL`: lm-eval tasks against an OpenAI-compatible server, with the offline task files.

The model is lm-eval's own `local-completions` client (glue, not a reimplementation): log-likelihood tasks
through `/v1/completions` with `echo` + `logprobs` on token ids, generation tasks with `max_tokens`/`stop`.
Works with `llmctl serve`, llama.cpp's server, vLLM and any server that implements those. lm-eval tokenizes on
the client side (context lengths), so the tokenizer comes from `--model` (a registry name or a folder: the
model being served) or `--tokenizer`. `--served-name` picks the server's model id (default: its only or first
model); the server's `max_model_len` (from /v1/models, when it says) bounds the requests. An API key is sent
from `OPENAI_API_KEY`, as lm-eval does. Perplexity, passkey and reward_accuracy need the weights in-process
and are refused here.

Examples:
    result = run_remote_eval("http://127.0.0.1:8000", "smollm2-135m-instruct", ["hellaswag"], config)
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError
from llmctl.evaluate.tasks import ALIGNMENT_METRICS, PASSKEY, PERPLEXITY, REWARD_ACCURACY, _quiet_lmeval, load_tasks


def server_models(base_url: str, timeout: float = 10.0) -> list[dict]:
    """The server's /v1/models list (one line naming the URL and the fix when it cannot be read)."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LlmctlError(
            f"cannot read {url} ({reason})", hint="start the server, or check --base-url (e.g. http://127.0.0.1:8000)"
        ) from None
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models:
        raise LlmctlError(f"{url} lists no models", hint="is this an OpenAI-compatible server?")
    return models


def pick_served(models: list[dict], served_name: str | None) -> dict:
    ids = [str(m.get("id")) for m in models]
    if served_name is None:
        return models[0]
    if served_name not in ids:
        raise LlmctlError(f"the server has no model {served_name!r}", hint=f"it serves: {', '.join(ids)}")
    return models[ids.index(served_name)]


def check_remote_tasks(tasks: list[str]) -> None:
    local_only = [t for t in (PERPLEXITY, PASSKEY, REWARD_ACCURACY, *ALIGNMENT_METRICS) if t in tasks]
    if local_only:
        raise UsageError(
            f"{', '.join(local_only)} needs the weights in-process, not a server",
            hint="drop --base-url for these tasks, or run lm-eval tasks only (hellaswag, arc_easy, …)",
        )


def tokenizer_source(model: str, tokenizer: str | None) -> str:
    """The folder holding the served model's tokenizer: --tokenizer, or --model's registry entry or path."""
    from llmctl.models.resolve import resolve_model

    if tokenizer is not None:
        return str(Path(tokenizer).expanduser())
    resolved = resolve_model(model)
    path = Path(resolved.path)
    if path.is_file() or not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise UsageError(
            f"{resolved.label} has no tokenizer folder for lm-eval's client",
            hint="give --tokenizer DIR (a folder with tokenizer.json), or --model as an HF folder or registry entry",
        )
    return str(path)


def adds_bos(tokenizer_dir: str) -> bool:
    """Whether the tokenizer puts its BOS in front by default (SmolLM2's does: `<|im_start|>`).

    In-process lm-eval (HFLM) encodes with the tokenizer's default special tokens, its API models without them
    unless told `add_bos_token`: told here when the tokenizer adds one, so both score the same token ids.
    """
    from llmctl.models.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    return tok.bos_token_id is not None and tok("a").input_ids[:1] == [tok.bos_token_id]


def remote_lm(base_url: str, served: dict, tokenizer_dir: str, config: dict):
    """lm-eval's local-completions client for the server's model."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    max_len = served.get("max_model_len")
    return LocalCompletionsAPI(
        base_url=base_url.rstrip("/") + "/v1/completions",
        model=str(served.get("id")),
        tokenizer=tokenizer_dir,
        tokenizer_backend="huggingface",
        tokenized_requests=True,
        add_bos_token=adds_bos(tokenizer_dir),
        max_length=int(max_len) if isinstance(max_len, int) and max_len > 1 else 2048,
        num_concurrent=1,  # one request at a time: the server batches what it gets; results do not depend on it
        max_retries=1,
        seed=config.get("seed") if config.get("seed") is not None else 1234,
    )


def run_remote_eval(base_url: str, model: str, tasks: list[str], config: dict, **kw):
    """Evaluate the served model on lm-eval tasks; an EvalResult as in-process eval gives (see the module doc).

    Keywords: served_name, tokenizer, gates, command, attach, progress.
    """
    from lm_eval import simple_evaluate

    from llmctl.evaluate.gates import check_gates
    from llmctl.evaluate.service import _finish, _resolve, harness_args
    from llmctl.evaluate.tasks import known_metrics, plan_tasks

    say = kw.get("progress") or (lambda _m: None)
    _quiet_lmeval()
    check_remote_tasks(tasks)
    plan = plan_tasks(tasks, config)
    served = pick_served(server_models(base_url), kw.get("served_name"))
    tok_dir = tokenizer_source(model, kw.get("tokenizer"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmctl-eval-") as tmp:
        say("Preparing tasks …")
        tm, objects, notes = load_tasks(plan, config, Path(tmp))
        check_gates(kw.get("gates") or [], known_metrics(objects, plan, config))
        say(f"Scoring {', '.join(plan.order)} against {base_url} ({served.get('id')}) …")
        lm = remote_lm(base_url, served, tok_dir, config)
        out = simple_evaluate(model=lm, tasks=objects, task_manager=tm, **harness_args(config))
    results = out or {}
    result = _finish(
        None,
        _resolve(model),
        plan,
        results,
        config,
        kw.get("gates") or [],
        None,
        kw.get("command", ""),
        kw.get("attach", True),
        notes + [f"scored through {base_url} (model {served.get('id')}) by lm-eval's local-completions"],
        time.perf_counter() - started,
    )
    result.results["llmctl"]["base_url"] = base_url
    result.results["llmctl"]["served_model"] = served.get("id")
    return result
