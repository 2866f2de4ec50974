"""Peak memory (and, from a few real steps, time per step) of a run, worked out before anything is loaded.

The model's shape comes from its config.json (or a GGUF file's metadata); the method, precision, batch and
sequence length from the resolved profile. Parts, in bytes: the process itself (the libraries), weights,
gradients and AdamW's two moments of what is trained, activations kept for the backward pass (every layer's, or
only each block's input plus one block's with gradient checkpointing), the response logits, KV caches of
rollouts, extra frozen models (a reference copy, a reward model) and, for quantize/prune, the calibration
buffers and Hessians. The peak is their sum: AdamW's moments live through the whole run, and gradients build
up while the backward pass frees activations, so the sum is an upper bound by at most the gradients.
`benchmarks/estimate.py` measures it against real runs (docs/estimate.md).

Examples:
    arch = arch_from_config(json.load(open("config.json")))
    est = train_estimate(arch, config, "cpu")               # est["peak_bytes"], est["breakdown"]
    check_fits(est, "cpu", config["train"]["ignore_memory_check"], "train.ignore_memory_check")
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import LlmctlError

MiB = 2**20
# Resident memory of a CPU process that has imported torch 2.13, transformers 4.57 and peft 0.21 (560 MiB
# measured here) plus a 49k-token tokenizer and the data: what every run pays before its model.
RUNTIME_CPU = 640 * MiB
# A CUDA context and the caching allocator's slack take this much device memory before the first tensor.
RUNTIME_CUDA = 600 * MiB
# Environment override of the free memory, in bytes (tests; a share of a machine): also read by models/rope.py.
MEMORY_ENV = "LLMCTL_MEMORY_BYTES"
# on CPU, 4-bit QLoRA saves no resident memory (see qlora_load_residue), so it is offered for GPUs
KNOBS = "--batch-size, --seq-len, --method qlora{gpu} or --set train.gradient_checkpointing=true"


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only transformer: what memory depends on."""

    kind: str  # "llama" (q/k/v/o + gated MLP) or "gpt2" (fused qkv, 2-matrix MLP, learned positions)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    tied: bool
    positions: int = 0

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of each linear layer in one block."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.inter
        if self.kind == "gpt2":
            return [("c_attn", h, 3 * h), ("c_proj", h, h), ("c_fc", h, i), ("mlp.c_proj", i, h)]
        return [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]

    def linear_params(self) -> int:
        return self.layers * sum(a * b for _, a, b in self.linears())

    def params(self) -> int:
        """Every parameter: blocks, norms (and biases for gpt2), embeddings and an untied output head."""
        norms = (4 if self.kind == "gpt2" else 2) * self.hidden
        biases = 9 * self.hidden + self.inter if self.kind == "gpt2" else 0
        embed = self.vocab * self.hidden * (1 if self.tied else 2) + self.positions * self.hidden
        final_norm = (2 if self.kind == "gpt2" else 1) * self.hidden
        return self.linear_params() + self.layers * (norms + biases) + embed + final_norm


def _get(cfg: dict, *names, default=None):
    return next((cfg[n] for n in names if cfg.get(n) is not None), default)


def arch_from_config(cfg: dict) -> Arch:
    """The Arch of a transformers config dict (LLaMA-like or GPT-2 names)."""
    hidden = int(_get(cfg, "hidden_size", "n_embd", default=0))
    layers = int(_get(cfg, "num_hidden_layers", "n_layer", default=0))
    if not hidden or not layers:
        raise LlmctlError("the model config names no hidden_size / num_hidden_layers", hint="check its config.json")
    heads = int(_get(cfg, "num_attention_heads", "n_head", default=1))
    gpt2 = cfg.get("model_type") == "gpt2" or "n_embd" in cfg
    return Arch(
        kind="gpt2" if gpt2 else "llama",
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads if gpt2 else int(_get(cfg, "num_key_value_heads", default=heads)),
        head_dim=int(_get(cfg, "head_dim", default=hidden // heads)),
        inter=int(_get(cfg, "intermediate_size", "n_inner", default=4 * hidden)),
        vocab=int(_get(cfg, "vocab_size", default=0)),
        tied=bool(cfg.get("tie_word_embeddings", True)),
        positions=int(_get(cfg, "n_positions", default=0)) if gpt2 else 0,
    )


def arch_from_path(path: Path) -> Arch:
    """The Arch of a model folder (config.json) or a .gguf file (its metadata; no tensors are read)."""
    from llmctl.models.formats.hf import read_json

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return arch_from_config(read_json(path / "config.json", "model config"))
    gguf = path if path.suffix == ".gguf" else next(iter(sorted(path.glob("*.gguf"))), None) if path.is_dir() else None
    if gguf is None:
        raise LlmctlError(f"{path} has no config.json or .gguf file to estimate from", hint="pass a model folder")
    from transformers import AutoConfig

    return arch_from_config(AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict())


def arch_of(spec: str) -> Arch:
    """The Arch of a `--model` (registry name, path, the default model, an adapter's base) without loading it;
    the default model not yet converted is read from its GGUF file's metadata."""
    from llmctl.models.default import ALIASES, gguf_path
    from llmctl.models.formats.hf import read_json
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    registry = Registry()
    if spec in ALIASES and registry.find(spec) is None:
        return arch_from_path(gguf_path())
    path = Path(resolve_model(spec, registry).path)
    adapter = path / "adapter_config.json"
    if not (path / "config.json").is_file() and adapter.is_file():
        return arch_of(read_json(adapter, "adapter config")["base_model_name_or_path"])
    return arch_from_path(path)


def _act_bytes_per_token(arch: Arch, adapted: list, method: str, act_b: int, device: str, dropout: float) -> int:
    """Bytes one block keeps per token for the backward pass (`act_b` per value: 4 fp32, 2 under autocast).

    LLaMA: the two norms' inputs and outputs (4h), q/k/v before and after RoPE and the attention output
    (2q + 4kv), the gated MLP's gate, up, SiLU and product (4i); GPT-2 alike with a 2-matrix MLP (2i + GELU).
    Per adapted linear (LoRA/DoRA, its input width `a`): the fp32 dropout output and its mask (5 bytes) and, under
    autocast, the low-precision copy the adapter's matmul saves; DoRA also keeps the base and adapter outputs it
    rescales by the magnitude (8 bytes per output value). bitsandbytes 0.50's CPU path keeps 4 more bytes per
    input value of each 4-bit linear (qlora). The per-adapter and 4-bit terms are fitted to peft 0.21 with
    benchmarks/estimate.py at two batch shapes (docs/estimate.md); its CUDA kernels are not measured.
    """
    h, q, kv, i = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.inter
    values = 4 * h + 2 * q + 4 * kv + 4 * i if arch.kind == "llama" else 10 * h + 3 * i
    per_input = (5 if dropout > 0 else 0) + (act_b if act_b < 4 else 0)
    extra = sum(a * per_input + (8 * b if method == "dora" else 0) for _, a, b in adapted)
    if method == "qlora" and not device.startswith("cuda"):
        extra += 4 * sum(a for _, a, _ in arch.linears())
    return values * act_b + extra


def _targets(arch: Arch, config: dict) -> list[tuple[str, int, int]]:
    wanted = config.get("lora", {}).get("target_modules") or ["all-linear"]
    if wanted == ["all-linear"]:
        return arch.linears()
    return [lin for lin in arch.linears() if any(lin[0] == t or lin[0].endswith("." + t) for t in wanted)]


def trainable_params(arch: Arch, config: dict) -> int:
    """Parameters the method trains: all, LoRA's A and B (and DoRA's magnitudes), or the virtual tokens."""
    method = config.get("method", "full")
    if method == "full":
        return arch.params()
    if method in ("prompt-tuning", "prefix-tuning"):
        n = config["prompt"]["num_virtual_tokens"]
        return n * arch.hidden * (1 if method == "prompt-tuning" else 2 * arch.layers)
    r = config["lora"]["r"]
    per = sum(r * (a + b) + (b if method == "dora" else 0) for _, a, b in _targets(arch, config))
    return arch.layers * per


def _weight_bytes(arch: Arch, method: str) -> int:
    """Resident weights: fp32 (master weights under autocast too), or NF4 linears (4 bits + one fp32 absmax per
    64 weights, double-quantized to ~8 bits) beside fp32 embeddings and norms for qlora."""
    if method != "qlora":
        return 4 * arch.params()
    lin = arch.linear_params()
    return int(lin * (0.5 + 1 / 64)) + 4 * (arch.params() - lin)


def train_estimate(
    arch: Arch,
    config: dict,
    device: str,
    *,
    rows: int = 1,
    extra_models: int = 0,
    rollout_tokens: int = 0,
    compute_dtype: str = "float32",
) -> dict:
    """Peak bytes of a training run by part; `rows` sequences per example (2 for chosen + rejected pairs),
    `extra_models` frozen full copies beside the policy (reference, reward model), `rollout_tokens` tokens per
    generated sequence (prompt + answer) of a rollout, whose KV cache is kept while sampling."""
    t, method = config["train"], config.get("method", "full")
    tokens = t["batch_size"] * t["seq_len"] * rows
    act_b = 4 if compute_dtype == "float32" else 2
    trained = trainable_params(arch, config)
    adapted = _targets(arch, config) if method in ("lora", "qlora", "dora") else []
    dropout = config.get("lora", {}).get("dropout", 0.0)
    per_layer = tokens * _act_bytes_per_token(arch, adapted, method, act_b, device, dropout)
    if t.get("gradient_checkpointing"):
        acts = arch.layers * tokens * arch.hidden * act_b + per_layer  # block inputs + one block recomputed
    else:
        acts = arch.layers * per_layer
    weights = _weight_bytes(arch, method)
    parts = {
        "runtime": RUNTIME_CUDA if device.startswith("cuda") else RUNTIME_CPU,
        "weights": weights,
        "gradients": 4 * trained,
        "optimizer_states": 8 * trained,  # AdamW: exp_avg and exp_avg_sq in fp32
        "activations": acts,
        # response logits in fp32, their log-softmax and its gradient (three vocab-wide rows per token)
        "logits": 3 * tokens * arch.vocab * 4,
    }
    if method == "qlora" and not device.startswith("cuda"):
        # on CPU the fp32 linears read while quantizing at load stay resident (freed, not returned to the OS:
        # measured 650 MiB after loading the default model, whose NF4 weights are 160 MiB)
        parts["qlora_load_residue"] = 4 * arch.linear_params()
    if compute_dtype != "float32" and method == "full":
        # autocast caches low-precision copies of weights that require grad only (a frozen base is cast per op)
        parts["autocast_weight_copies"] = 2 * arch.params()
    if extra_models:
        parts["extra_models"] = extra_models * 4 * arch.params()
    if rollout_tokens:
        kv = arch.kv_heads * arch.head_dim
        parts["rollout_kv_cache"] = 2 * arch.layers * kv * rollout_tokens * t["batch_size"] * rows * act_b
    return _finish(parts, tokens=tokens, trainable_parameters=trained, parameters=arch.params())


def compress_estimate(arch: Arch, config: dict, command: str) -> dict:
    """Peak bytes of quantize or prune: the fp32 model, one block's working copy, the calibration activations
    (each window's block input and output), one block's Hessians (inputs x inputs, fp32, per distinct input of
    a GPTQ/SparseGPT/Wanda step) and the perplexity pass's logits."""
    calib, ev = config.get("calib", {}), config.get("eval", {})
    samples, seqlen = int(calib.get("samples") or 0), int(calib.get("seqlen") or 0)
    has_calib = bool(calib.get("data")) or command == "prune" and config.get("method") != "magnitude"
    block = sum(a * b for _, a, b in arch.linears()) * 4
    ins = {a for _, a, _ in arch.linears()}
    parts = {
        "runtime": RUNTIME_CPU,
        "weights": 4 * arch.params(),
        "block_copy": block,
        "calibration_buffers": 2 * samples * seqlen * arch.hidden * 4 if has_calib else 0,
        "hessians": (sum(a * a for a in ins) + max(ins) ** 2) * 4 if has_calib else 0,
        # one window of perplexity: fp32 logits and their log-softmax
        "logits": 2 * int(ev.get("seqlen") or 512) * arch.vocab * 4 if ev.get("tokens", 1) else 0,
    }
    return _finish({k: v for k, v in parts.items() if v}, parameters=arch.params())


def compress_check(model: str, config: dict, command: str, check: bool = True) -> dict | None:
    """quantize/prune: the estimate of `model` (read without loading it) and, with `check`, the refusal when it
    does not fit (a model whose shape cannot be read is not refused: None)."""
    try:
        arch = arch_of(model)
    except LlmctlError:
        if check:
            return None
        raise
    est = compress_estimate(arch, config, command) | {"device": "cpu"}
    check_fits(est, "cpu", not check or config["ignore_memory_check"], "ignore_memory_check")
    return est


def dry_run_compress(model: str, config: dict, command: str) -> dict:
    """What quantize's and prune's `--dry-run` show: the estimate of `model`, or why it cannot be made.

    Examples:
        dry_run_compress("smollm2-135m-instruct", resolve_config("prune"), "prune")["peak_bytes"]
    """
    try:
        return compress_check(model, config, command, check=False)
    except LlmctlError as exc:
        return unavailable(exc)


def unavailable(exc: LlmctlError) -> dict:
    """The estimate of a dry run whose model or data cannot be read (the config is still shown)."""
    return {"peak_bytes": None, "seconds_per_step": None, "breakdown": {}, "unavailable": str(exc)}


def _finish(parts: dict, **facts) -> dict:
    return {
        "peak_bytes": int(sum(parts.values())),
        "seconds_per_step": None,
        "breakdown": {k: int(v) for k, v in parts.items()},
        **facts,
    }


def free_bytes(device: str) -> int | None:
    """Memory a run can take now: $LLMCTL_MEMORY_BYTES, the GPU's free bytes, or the host's MemAvailable."""
    from llmctl.models.rope import available_bytes

    env = os.environ.get(MEMORY_ENV, "")
    return int(env) if env.isdigit() else available_bytes(device)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(est: dict, device: str, ignore: bool, override: str) -> None:
    """Refuse (before loading) a run whose estimated peak exceeds the free memory, naming the knobs that help."""
    have = free_bytes(device)
    est["free_bytes"] = have
    if ignore or have is None or est["peak_bytes"] <= have:
        return
    top = sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k.replace('_', ' ')} {gib(v)}" for k, v in top)
    raise LlmctlError(
        f"this run needs about {gib(est['peak_bytes'])} at its peak ({parts}); {device} has {gib(have)} free",
        hint=f"lower it with {KNOBS.format(gpu='' if device.startswith('cuda') else ' (on a GPU)')}; "
        f"or start anyway with --set {override}=true",
    )


def describe(est: dict) -> list[str]:
    """Lines for people: the peak, its parts, and the probe's time per step when one ran."""
    if est.get("peak_bytes") is None:
        return [f"no memory estimate: {est.get('unavailable')}"]
    lines = [f"estimated peak memory {gib(est['peak_bytes'])}"]
    if est.get("free_bytes") is not None:
        lines[0] += f" ({gib(est['free_bytes'])} free)"
    lines += [f"  {k.replace('_', ' '):<24} {gib(v)}" for k, v in est["breakdown"].items()]
    if est.get("seconds_per_step") is not None:
        probe = est.get("probe", {})
        lines.append(
            f"seconds per step {est['seconds_per_step']:.3f} (measured over {probe.get('steps')} steps; "
            f"peak resident {gib(probe.get('peak_rss_bytes') or 0)})"
        )
    return lines


@contextlib.contextmanager
def scratch_home() -> Iterator[Path]:
    """A throw-away LLMCTL_HOME for a probe run: its run dir and registry entry vanish with it."""
    old = os.environ.get("LLMCTL_HOME")
    with tempfile.TemporaryDirectory(prefix="llmctl-estimate-") as tmp:
        os.environ["LLMCTL_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("LLMCTL_HOME", None)
            else:
                os.environ["LLMCTL_HOME"] = old


def probe_config(config: dict, steps: int) -> dict:
    """The run's config cut to `steps` optimizer steps with no evaluation and no intermediate checkpoints."""
    import copy

    c = copy.deepcopy(config)
    c["train"].update(max_steps=steps, epochs=None, eval_every=0, save_every=0, ignore_memory_check=True)
    return c


def probe(run: Callable[[], float], steps: int, est: dict, device: str) -> dict:
    """Run `steps` real steps (`run` returns the seconds its training loop took) and add the measured time per
    step and peak memory (resident set on CPU, allocated on CUDA) to `est`."""
    import resource

    seconds = run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    if device.startswith("cuda"):
        import torch

        peak = int(torch.cuda.max_memory_allocated(torch.device(device)))
    est["seconds_per_step"] = round(seconds / steps, 4)
    est["probe"] = {"steps": steps, "seconds": round(seconds, 3), "peak_rss_bytes": int(peak)}
    return est
