"""`finetune`: full, LoRA, QLoRA, DoRA, prompt/prefix tuning with SFT, DPO or reward-model objectives.

Data handling lives in `llmctl.finetune_data`; optimizer, schedule, checkpoints and metric logs are the
shared machinery in `llmctl.training` (the same as `pretrain`).

Examples:
    config = resolve_config("finetune", "lora", [], {"train.max_steps": 50})
    result = finetune("smollm2-135m-instruct", Path("alpaca.json"), "smol-lora", config)
    result.path, result.metrics["eval_loss"]
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmctl.errors import LlmctlError
from llmctl.finetune_data import (IGNORE, collate, collate_pairs, pack, read_records, split_eval, tokenize_pref,
                                  tokenize_sft)

PEFT_METHODS = ("lora", "qlora", "dora", "prompt-tuning", "prefix-tuning")


@dataclass
class FinetuneResult:
    """What a finetuning run produced."""

    name: str
    path: str
    format: str
    method: str
    objective: str
    steps: int
    run_dir: str
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    resumed_from: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


# ---- model set-up ----------------------------------------------------------------------------------


def check_bnb_4bit(device: str) -> None:
    """Make sure bitsandbytes 4-bit kernels run on this device; else a clear error suggesting lora."""
    try:
        import bitsandbytes.functional as F
        import torch

        w = torch.randn(64, 64, device=device)
        q, state = F.quantize_4bit(w, quant_type="nf4")
        F.dequantize_4bit(q, state)
    except Exception as exc:  # import errors, missing kernels, unsupported devices
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmctlError(f"qlora needs bitsandbytes 4-bit kernels, which cannot run on {device} here ({reason})",
                          hint="use --method lora (same adapter, full-precision base)") from exc


def linear_module_names(model) -> list[str]:
    """Short names of the linear layers an adapter can target (not the output head)."""
    import torch

    names = set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full, module in model.named_modules():
        kind = type(module).__name__
        if module is head or not full:
            continue
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            names.add(full.split(".")[-1])
    return sorted(names)


def _check_targets(model, targets: list[str]) -> None:
    if targets in (["all-linear"], "all-linear"):
        return
    names = {n for n, _ in model.named_modules()}
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise LlmctlError(f"lora.target_modules {', '.join(missing)} match no module of this model",
                          hint=f"linear modules here: {', '.join(linear_module_names(model))} (or all-linear)")


def load_base(base, config: dict, device: str, tokenizer):
    """The base model for a method and objective: fp32, or 4-bit NF4 for qlora, or with a reward head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmctl.model_import import check_weights

    method, objective = config["method"], config["objective"]
    if Path(base.path).is_dir():
        check_weights(Path(base.path))
    kwargs: dict = {"dtype": torch.float32}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        check_bnb_4bit(device)
        q = config["qlora"]
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"], bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]))
        kwargs["device_map"] = {"": device}
    cls = AutoModelForSequenceClassification if objective == "reward" else AutoModelForCausalLM
    if objective == "reward":
        kwargs["num_labels"] = 1
    try:
        model = cls.from_pretrained(base.path, **kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise LlmctlError(f"cannot load base model {base.label} ({text[0] if text else type(exc).__name__})",
                          hint="finetune needs a Hugging Face model folder or registry entry") from exc
    if objective == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if method != "qlora":
        model.to(device)
    return model


def apply_method(model, config: dict, tokenizer):
    """Wrap the base for the training method; return the model to train."""
    method, objective = config["method"], config["objective"]
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    task = "SEQ_CLS" if objective == "reward" else "CAUSAL_LM"
    if method in ("lora", "qlora", "dora"):
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lo = config["lora"]
        targets = lo["target_modules"]
        _check_targets(model, targets)
        peft_config = LoraConfig(r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=lo["dropout"], bias=lo["bias"],
                                 target_modules="all-linear" if targets == ["all-linear"] else targets,
                                 use_dora=method == "dora", task_type=task)
    elif method == "prompt-tuning":
        p = config["prompt"]
        extra = {}
        if p["init_text"]:
            extra = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": p["init_text"],
                     "tokenizer_name_or_path": tokenizer.name_or_path}
        peft_config = PromptTuningConfig(task_type=task, num_virtual_tokens=p["num_virtual_tokens"], **extra)
    else:
        peft_config = PrefixTuningConfig(task_type=task, num_virtual_tokens=config["prompt"]["num_virtual_tokens"])
    try:
        if method == "prompt-tuning" and config["prompt"]["init_text"]:
            import transformers

            orig = transformers.AutoTokenizer.from_pretrained
            transformers.AutoTokenizer.from_pretrained = lambda *a, **k: tokenizer  # no hub lookups
            try:
                return get_peft_model(model, peft_config)
            finally:
                transformers.AutoTokenizer.from_pretrained = orig
        return get_peft_model(model, peft_config)
    except LlmctlError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise LlmctlError(f"cannot set up {method} on this model ({text[0] if text else type(exc).__name__})",
                          hint="see `llmctl profiles show finetune/lora` for the adapter settings") from exc


def _lm_parts(model):
    """(body, head) of a causal LM (through a PEFT wrapper), for the response-only loss path."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return body, head


def _to(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def token_logps(model, batch: dict, fast: bool, want: str = "sum"):
    """Over the labelled (response) positions: the summed NLL and count ("sum"), or per-row log-prob sums ("rows").

    The fast path runs the transformer body and applies the output head only where labels exist, so no
    full (batch, length, vocab) logits tensor is ever built.
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    target = labels[:, 1:]
    sel = target != IGNORE
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if fast:
        body, head = _lm_parts(model)
        hidden = body(**kwargs, use_cache=False).last_hidden_state[:, :-1]
        logits = head(hidden[sel]).float()
    else:
        out = model(**kwargs, use_cache=False)
        logits = out.logits[:, -labels.shape[1]:][:, :-1][sel].float()
    y = target[sel]
    if want == "sum":
        return F.cross_entropy(logits, y, reduction="sum"), int(sel.sum())
    logp = -F.cross_entropy(logits, y, reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(target)[sel]
    return torch.zeros(labels.shape[0], device=logp.device, dtype=logp.dtype).index_add(0, rows, logp)


def reward_scores(model, batch: dict):
    """Scalar reward per row, read at each row's last real token."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    h = hidden[range(hidden.shape[0]), last]
    head = model.base_model.model.score if hasattr(model, "base_model") and hasattr(model, "peft_config") else base.score
    return head(h).squeeze(-1).float()


# ---- batches -----------------------------------------------------------------------------------------


class Plan:
    """Deterministic micro-batch order: micro-batch g is epoch g // per_epoch, slot g % per_epoch."""

    def __init__(self, items: list, rows: list[list[int]], batch_size: int, seed: int, make: Callable):
        self.items, self.rows, self.bs, self.seed, self.make = items, rows, batch_size, seed, make
        self.per_epoch = max(1, math.ceil(len(rows) / batch_size))
        self._epoch, self._order = -1, []

    def batch(self, g: int):
        epoch, slot = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            self._order = list(range(len(self.rows)))
            random.Random(self.seed * 1000003 + epoch).shuffle(self._order)
            self._epoch = epoch
        chosen = self._order[slot * self.bs:(slot + 1) * self.bs]
        return self.make([self.rows[r] for r in chosen])


def _sft_plan(examples, config, pad_id, packed, seed):
    rows = pack(examples, config["train"]["seq_len"], None) if packed else [[i] for i in range(len(examples))]
    return Plan(examples, rows, config["train"]["batch_size"], seed,
                lambda rows: collate([[examples[i] for i in row] for row in rows], pad_id, packed))


def _pref_plan(pairs, config, pad_id, seed):
    return Plan(pairs, [[i] for i in range(len(pairs))], config["train"]["batch_size"], seed,
                lambda rows: collate_pairs([pairs[row[0]] for row in rows], pad_id))


def sft_eval_loss(model, plan: Plan, device: str, dtype: str, fast: bool, max_batches: int | None = None) -> float:
    """Mean response-token loss (nats/token) over the first max_batches batches of an eval plan."""
    import torch

    from llmctl.training import autocast

    was = model.training
    model.eval()
    total, count = 0.0, 0
    n = plan.per_epoch if max_batches is None else min(plan.per_epoch, max_batches)
    with torch.no_grad(), autocast(device, dtype):
        for g in range(n):
            s, c = token_logps(model, _to(plan.batch(g), device), fast)
            total += float(s)
            count += c
    model.train(was)
    return total / max(1, count)


# ---- training -----------------------------------------------------------------------------------------


def _fingerprint(config: dict, base_label: str, data: Path) -> dict:
    h = hashlib.sha256()
    with open(data, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    t = config["train"]
    fp = {"base": base_label, "method": config["method"], "objective": config["objective"],
          "data_sha256": h.hexdigest()[:16], "data_format": config["data"]["format"],
          "template": config["data"]["template"], "packing": config["data"]["packing"],
          "eval_split": config["data"]["eval_split"], "max_examples": config["data"]["max_examples"]}
    for k in ("max_steps", "epochs", "lr", "min_lr_ratio", "warmup_steps", "batch_size", "grad_accum", "seq_len",
              "seed", "weight_decay", "beta1", "beta2"):
        fp[f"train.{k}"] = t[k]
    if config["method"] in ("lora", "qlora", "dora"):
        fp.update({f"lora.{k}": v for k, v in config["lora"].items()})
    if config["method"] == "qlora":
        fp.update({f"qlora.{k}": v for k, v in config["qlora"].items()})
    if config["method"] in ("prompt-tuning", "prefix-tuning"):
        fp["prompt.num_virtual_tokens"] = config["prompt"]["num_virtual_tokens"]
    if config["objective"] == "dpo":
        fp["dpo.beta"] = config["dpo"]["beta"]
    return fp


def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def finetune(model: str, data: Path, name: str, config: dict, resume: bool = False, force: bool = False,
             command: str = "", on_log: Callable[[str], None] | None = None,
             stop_after: int | None = None) -> FinetuneResult:
    """Finetune `model` on `data` and register the result as `name` (adapter or full model).

    `stop_after` ends the run after that many optimizer steps without registering (as an interrupted run
    would; checkpoints stay for `--resume`).
    """
    import torch

    from llmctl.loading import load_tokenizer, pick_device
    from llmctl.paths import llmctl_home
    from llmctl.profiles import save_config
    from llmctl.registry import ModelEntry, Registry, validate_name
    from llmctl.resolve import resolve_model
    from llmctl.training import (Checkpointer, MetricsLogger, autocast, compute_dtype, make_optimizer,
                                 make_scheduler, seed_everything, set_rng_state)

    log = on_log or (lambda s: None)
    validate_name(name)
    registry = Registry()
    if registry.find(name) is not None and not force:
        raise LlmctlError(f"model {name!r} already exists in the registry",
                          hint="pick another --name or pass --force to replace it")
    method, objective, t = config["method"], config["objective"], config["train"]
    if objective == "reward" and method in ("prompt-tuning", "prefix-tuning"):
        raise LlmctlError(f"--objective reward cannot be trained with --method {method}",
                          hint="use --method lora or full")
    base = resolve_model(model, registry)
    if base.format != "hf":
        raise LlmctlError(f"{base.label} has format {base.format!r}; finetune needs a full model (hf)",
                          hint="merge an adapter first with `llmctl merge-lora`, or pick a base model")
    device = pick_device(t["device"])
    run_dtype = compute_dtype(t["dtype"], device)
    seed_everything(t["seed"])

    # data
    records, kind = read_records(Path(data), config["data"]["format"])
    if config["data"]["max_examples"]:
        records = records[:config["data"]["max_examples"]]
    if objective in ("dpo", "reward") and kind != "preference":
        raise LlmctlError(f"--objective {objective} needs preference data (prompt, chosen, rejected); "
                          f"{data} is {kind} data", hint="give a JSONL of {prompt, chosen, rejected}")
    if objective == "sft" and kind == "preference":
        raise LlmctlError(f"{data} is preference data (prompt, chosen, rejected); sft needs responses",
                          hint="use --objective dpo or --objective reward")
    tokenizer = load_tokenizer(base.path)
    train_recs, eval_recs = split_eval(records, config["data"]["eval_split"])
    seq_len = t["seq_len"]
    packed = config["data"]["packing"] and objective == "sft" and method not in ("prompt-tuning", "prefix-tuning")
    if objective == "sft":
        train_items, stats = tokenize_sft(train_recs, kind, tokenizer, config["data"]["template"], seq_len)
        eval_items = tokenize_sft(eval_recs, kind, tokenizer, config["data"]["template"], seq_len)[0] if eval_recs else []
    else:
        train_items, stats = tokenize_pref(train_recs, tokenizer, config["data"]["template"], seq_len)
        eval_items = tokenize_pref(eval_recs, tokenizer, config["data"]["template"], seq_len)[0] if eval_recs else []
    data_info = stats.to_dict() | {"format": kind, "eval_examples": len(eval_items), "packed": packed}
    log(f"data: {kind}, {stats.kept} training examples ({stats.truncated} truncated to {seq_len} tokens, "
        f"{stats.dropped_prompt_too_long} dropped with prompts over the max length), {len(eval_items)} held out, "
        f"template {stats.extra['template']}")

    # model
    base_model = load_base(base, config, device, tokenizer)
    net = apply_method(base_model, config, tokenizer)
    fast = method not in ("prompt-tuning", "prefix-tuning") and all(p is not None for p in _lm_parts(net)) \
        and objective != "reward"
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in net.parameters())
    log(f"{method} on {base.label}: {trainable:,} trainable of {total_params:,} parameters, device {device}, "
        f"compute {run_dtype}")
    ref_model = None
    if objective == "dpo" and method == "full":
        ref_model = copy.deepcopy(net).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)

    pad_id = tokenizer.pad_token_id
    if objective == "sft":
        plan = _sft_plan(train_items, config, pad_id, packed, t["seed"])
        eval_plan = _sft_plan(eval_items, config, pad_id, packed, t["seed"]) if eval_items else None
    else:
        plan = _pref_plan(train_items, config, pad_id, t["seed"])
        eval_plan = _pref_plan(eval_items, config, pad_id, t["seed"]) if eval_items else None
    accum = t["grad_accum"]
    max_steps = t["max_steps"]
    if t["epochs"]:
        max_steps = max(1, math.ceil(t["epochs"] * plan.per_epoch / accum))

    run_dir = llmctl_home() / "runs" / name
    ckpt = Checkpointer(run_dir / "checkpoints")
    fingerprint = _fingerprint(config, base.label, Path(data))
    optimizer = make_optimizer(net, t["lr"], t["weight_decay"], (t["beta1"], t["beta2"]), device)
    scheduler = make_scheduler(optimizer, max_steps, t["warmup_steps"], t["min_lr_ratio"])
    start, tokens_seen, resumed_from = 0, 0, None
    if resume:
        state = ckpt.load_latest()
        if state is None:
            raise LlmctlError(f"--resume given but {ckpt.root} holds no checkpoint",
                              hint="drop --resume to start a new run")
        else:
            _check_resume(state, fingerprint, net, ckpt.root)
            with torch.no_grad():
                params = dict(net.named_parameters())
                for n, v in state["model"].items():
                    params[n].copy_(v)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start = resumed_from = state["step"]
            tokens_seen = state["extra"].get("tokens_seen", 0)
            log(f"resumed from step {start} ({ckpt.root})")
    elif ckpt.steps():
        import shutil

        shutil.rmtree(ckpt.root, ignore_errors=True)
    metrics_log = MetricsLogger(run_dir, append=resume and start > 0)
    if start:
        metrics_log.truncate_after(start)
    save_config(config, run_dir / "llmctl-config.yaml", command)

    params = [p for p in net.parameters() if p.requires_grad]
    net.train()
    if ref_model is None and objective == "dpo":
        ref_ctx = net.disable_adapter
    else:
        ref_ctx = contextlib.nullcontext
    last_loss, last_eval = None, None
    t0, cpu0, tokens_run = time.time(), time.process_time(), 0
    step = start
    for step in range(start + 1, max_steps + 1):
        micro = [plan.batch((step - 1) * accum + k) for k in range(accum)]
        denom = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro) if objective == "sft" else \
            sum(b["input_ids"].shape[0] // 2 for b in micro)
        step_loss, extra = 0.0, {}
        for b in micro:
            b = _to(b, device)
            tokens_run += b["tokens"]
            with autocast(device, run_dtype):
                if objective == "sft":
                    s, _ = token_logps(net, b, fast)
                    loss = s / max(1, denom)
                elif objective == "dpo":
                    loss, extra = _dpo_loss(net, ref_model, ref_ctx, b, fast, config["dpo"]["beta"], denom)
                else:
                    loss, extra = _reward_loss(net, b, denom)
            loss.backward()
            step_loss += float(loss.detach())
        if t["grad_clip"]:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t["grad_clip"]))
        else:
            grad_norm = 0.0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += sum(b["tokens"] for b in micro)
        last_loss = step_loss
        row = {"loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": tokens_seen}
        row.update(extra)
        if eval_plan is not None and t["eval_every"] and (step % t["eval_every"] == 0 or step == max_steps):
            ev = _evaluate(net, ref_model, ref_ctx, eval_plan, config, device, fast,
                           None if step == max_steps else t["eval_batches"], run_dtype)
            row.update(ev)
            last_eval = ev
        elapsed = time.time() - t0
        row["tokens_per_s"] = tokens_run / elapsed if elapsed else 0.0
        metrics_log.log(step, row)
        if step % t["log_every"] == 0 or step == max_steps or "eval_loss" in row:
            ev_txt = f"  eval_loss {row['eval_loss']:.4f}" if "eval_loss" in row else ""
            log(f"step {step}/{max_steps}  loss {step_loss:.4f}{ev_txt}  lr {row['lr']:.2e}  "
                f"{row['tokens_per_s']:.0f} tok/s")
        if (t["save_every"] and step % t["save_every"] == 0) or step == stop_after:
            ckpt.save(step, _trainable_state(net), optimizer, scheduler,
                      extra={"tokens_seen": tokens_seen, "fingerprint": json.dumps(fingerprint, sort_keys=True)})
        if stop_after is not None and step >= stop_after:
            metrics_log.close(f"finetune {name}")
            return FinetuneResult(name, "", "", method, objective, step, str(run_dir), {"loss": last_loss},
                                  data_info, resumed_from)
    if eval_plan is not None and last_eval is None:
        last_eval = _evaluate(net, ref_model, ref_ctx, eval_plan, config, device, fast, None, run_dtype)
    ckpt.save(max(step, start), _trainable_state(net), optimizer, scheduler,
              extra={"tokens_seen": tokens_seen, "fingerprint": json.dumps(fingerprint, sort_keys=True)})
    metrics_log.close(f"finetune {name} ({method}, {objective})")
    elapsed, cpu = time.time() - t0, time.process_time() - cpu0
    metrics = {"train_loss": last_loss, **(last_eval or {}), "steps": max_steps, "tokens": tokens_seen,
               "tokens_per_s": round(tokens_run / elapsed, 1) if elapsed else None,
               "train_seconds": round(elapsed, 2), "train_cpu_seconds": round(cpu, 2), "tokens_trained": tokens_run}

    # output
    out_format = "peft-adapter" if method in PEFT_METHODS else "hf"
    meta = {"method": method, "objective": objective, "base": base.label, "run_dir": str(run_dir),
            "compute_dtype": run_dtype,
            "trainable_parameters": trainable, "data": data_info, "template": stats.extra["template"]}
    meta["base_arch"] = _arch_of(base_model)
    if method == "qlora":
        meta["base_quantization"] = {"bits": 4, **config["qlora"]}
    if objective == "reward":
        meta["head"] = "reward"
    with registry.new_model_dir(name, force=force) as tmp:
        if out_format == "peft-adapter":
            net.save_pretrained(tmp)
            cfg_path = tmp / "adapter_config.json"
            acfg = json.loads(cfg_path.read_text())
            acfg["base_model_name_or_path"] = base.name or base.path
            cfg_path.write_text(json.dumps(acfg, indent=2))
        else:
            net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_config(config, tmp / "llmctl-config.yaml", command)
        for extra_file in ("metrics.csv", "loss.png"):
            src = run_dir / extra_file
            if src.is_file():
                (tmp / extra_file).write_bytes(src.read_bytes())
        entry = ModelEntry(name=name, format=out_format, path="", parents=[base.name or base.path], command=command,
                           profile=config, meta=meta,
                           metrics={f"finetune.{k}": v for k, v in metrics.items()
                                    if isinstance(v, (int, float)) and k in ("train_loss", "eval_loss",
                                                                              "eval_accuracy", "tokens_per_s")})
        registry.add(entry, staged=tmp, force=force)
    return FinetuneResult(name, str(registry.model_dir(name)), out_format, method, objective, max_steps,
                          str(run_dir), metrics, data_info, resumed_from)


def _arch_of(model) -> str:
    from llmctl.merge import _arch

    return _arch(model.config)


def _check_resume(state: dict, fingerprint: dict, net, root: Path) -> None:
    try:
        saved = json.loads(state["extra"].get("fingerprint", "{}"))
    except (TypeError, ValueError):
        saved = {}
    diff = [f"{k}={saved.get(k)!r} (now {fingerprint.get(k)!r})" for k in sorted(set(saved) | set(fingerprint))
            if saved.get(k) != fingerprint.get(k)]
    params = {n: tuple(p.shape) for n, p in net.named_parameters() if p.requires_grad}
    shapes = {n: tuple(v.shape) for n, v in state["model"].items()}
    if not diff and params != shapes:
        diff = ["its trainable parameters differ from this model's"]
    if diff:
        raise LlmctlError(f"cannot resume from {root}: the checkpoint was made with " + ", ".join(diff[:6]),
                          hint="resume with the same settings, or drop --resume to start over")


def _dpo_loss(net, ref_model, ref_ctx, b, fast, beta, denom):
    import torch
    import torch.nn.functional as F

    logp = token_logps(net, b, fast, want="rows")
    with torch.no_grad():
        if ref_model is not None:
            ref = token_logps(ref_model, b, fast, want="rows")
        else:
            with ref_ctx():
                ref = token_logps(net, b, fast, want="rows")
    n = logp.shape[0] // 2
    margin = (logp[:n] - ref[:n]) - (logp[n:] - ref[n:])
    losses = -F.logsigmoid(beta * margin)
    extra = {"reward_accuracy": float((margin > 0).float().mean()),
             "reward_margin": float(beta * margin.detach().mean())}
    return losses.sum() / max(1, denom), extra


def _reward_loss(net, b, denom):
    import torch.nn.functional as F

    scores = reward_scores(net, b)
    n = scores.shape[0] // 2
    diff = scores[:n] - scores[n:]
    extra = {"pair_accuracy": float((diff.detach() > 0).float().mean())}
    return -F.logsigmoid(diff).sum() / max(1, denom), extra


def _evaluate(net, ref_model, ref_ctx, plan, config, device, fast, max_batches, dtype) -> dict:
    import torch

    from llmctl.training import autocast

    objective = config["objective"]
    if objective == "sft":
        return {"eval_loss": sft_eval_loss(net, plan, device, dtype, fast, max_batches)}
    was = net.training
    net.eval()
    total, correct, count = 0.0, 0.0, 0
    n = plan.per_epoch if max_batches is None else min(plan.per_epoch, max_batches)
    with torch.no_grad(), autocast(device, dtype):
        for g in range(n):
            b = _to(plan.batch(g), device)
            pairs = b["input_ids"].shape[0] // 2
            if objective == "dpo":
                loss, extra = _dpo_loss(net, ref_model, ref_ctx, b, fast, config["dpo"]["beta"], 1)
                acc = extra["reward_accuracy"]
            else:
                loss, extra = _reward_loss(net, b, 1)
                acc = extra["pair_accuracy"]
            total += float(loss)
            correct += acc * pairs
            count += pairs
    net.train(was)
    return {"eval_loss": total / max(1, count), "eval_accuracy": correct / max(1, count)}
