"""The TRL side of benchmarks/align_vs_trl.py: one objective trained with TRL's own trainer, configured from llmctl's
resolved finetune settings, run as a child process (its peak RSS is its own).

Examples:
    python benchmarks/_trl_side.py SPEC.json     # spec: objective, llmctl config, base folder, data file, out folder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _trl_args(cfg: dict, out: Path) -> dict:
    """HF Trainer settings equal to llmctl's resolved train section (its schedule: `_same_schedule`)."""
    t = cfg["train"]
    return dict(
        output_dir=str(out / "trainer"),
        max_steps=t["max_steps"],
        per_device_train_batch_size=t["batch_size"],
        gradient_accumulation_steps=t["grad_accum"],
        learning_rate=t["lr"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": t["min_lr_ratio"]},
        warmup_steps=t["warmup_steps"],
        weight_decay=t["weight_decay"],
        adam_beta1=t["beta1"],
        adam_beta2=t["beta2"],
        max_grad_norm=t["grad_clip"],
        seed=t["seed"],
        data_seed=t["seed"],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _same_schedule(trainer, cfg: dict) -> None:
    """Give the trainer llmctl's own learning-rate schedule (llmctl.training.optim.lr_factor).

    HF's linear warmup starts at 0 (the first update does nothing), llmctl's at 1/warmup_steps: with the same
    warmup_steps the two schedules are one update apart, which at a small budget is a different run.
    """
    import torch

    from llmctl.training.optim import lr_factor

    t = cfg["train"]

    def create_scheduler(num_training_steps: int, optimizer=None):
        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or trainer.optimizer,
                lambda s: lr_factor(s, t["max_steps"], t["warmup_steps"], t["min_lr_ratio"]),
            )
            trainer._created_lr_scheduler = True  # as Trainer.create_scheduler marks its own
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler  # the Trainer builds its schedule through this at train()


def _lora(cfg: dict, task_type: str):
    from peft import LoraConfig

    lo = cfg["lora"]
    targets = "all-linear" if lo["target_modules"] == ["all-linear"] else lo["target_modules"]
    return LoraConfig(
        r=lo["r"],
        lora_alpha=lo["alpha"],
        lora_dropout=lo["dropout"],
        target_modules=targets,
        bias=lo["bias"],
        task_type=task_type,
    )


def _conversation(rec: dict) -> dict:
    prompt = rec["prompt"] if isinstance(rec["prompt"], list) else [{"role": "user", "content": rec["prompt"]}]
    return {"prompt": prompt, **{k: [{"role": "assistant", "content": rec[k]}] for k in ("chosen", "rejected")}}


def _math_reward(prompts, completions, answer, **_):
    from llmctl.finetune.rewards import math_exact

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [math_exact(p, t, answer=a) for p, t, a in zip(prompts, texts, answer)]


def _causal_setup(obj: str, cfg: dict, records: list[dict], common: dict) -> tuple:
    """(Trainer class, its config, rows, extra trainer arguments) of TRL's DPO, KTO or GRPO from llmctl's config."""
    seq = cfg["train"]["seq_len"]
    if obj == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=cfg["dpo"]["beta"], loss_type=[cfg["dpo"]["loss"]], max_length=seq)
        return DPOTrainer, args, [_conversation(r) for r in records], {}
    if obj == "kto":
        from trl import KTOConfig, KTOTrainer

        k = cfg["kto"]
        args = KTOConfig(
            **common,
            beta=k["beta"],
            desirable_weight=k["desirable_weight"],
            undesirable_weight=k["undesirable_weight"],
            max_length=seq,
        )
        rows = []
        for r in records:  # a pair is one desirable and one undesirable example, as llmctl reads it
            c = _conversation(r)
            rows += [
                {"prompt": c["prompt"], "completion": c["chosen"], "label": True},
                {"prompt": c["prompt"], "completion": c["rejected"], "label": False},
            ]
        return KTOTrainer, args, rows, {}
    from trl import GRPOConfig, GRPOTrainer

    g, ro = cfg["grpo"], cfg["rollout"]
    # TRL's batch counts completions; llmctl's counts prompts (each with num_generations answers)
    common = {**common, "per_device_train_batch_size": cfg["train"]["batch_size"] * g["num_generations"]}
    args = GRPOConfig(
        **common,
        num_generations=g["num_generations"],
        beta=g["beta"],
        epsilon=g["epsilon"],
        loss_type=g["loss_type"],
        scale_rewards="group" if g["scale_rewards"] else "none",
        num_iterations=g["epochs"],
        steps_per_generation=1,  # one optimizer update per generation round, as llmctl's step
        max_completion_length=ro["max_new_tokens"],
        temperature=ro["temperature"],
        top_k=ro["top_k"],
        top_p=ro["top_p"],
    )
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in records]
    return GRPOTrainer, args, rows, {"reward_funcs": [_math_reward]}


def trl_worker(spec_path: Path) -> None:
    """Train one objective with TRL as the spec says; write the adapter and {train_runtime, num_tokens}."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from llmctl.data.sft import read_records

    spec = json.loads(spec_path.read_text())
    cfg, obj, out = spec["config"], spec["objective"], Path(spec["out"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(cfg["train"]["seed"])
    tok = AutoTokenizer.from_pretrained(spec["base"])
    records = read_records(Path(spec["data"]), "auto", uses=("prompts",) if obj == "grpo" else None)[0]
    common = _trl_args(cfg, out)
    if obj == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(spec["base"], num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(
            model=model,
            args=RewardConfig(**common, max_length=cfg["train"]["seq_len"]),
            train_dataset=Dataset.from_list([_conversation(r) for r in records]),
            processing_class=tok,
            peft_config=_lora(cfg, "SEQ_CLS"),
        )
    else:
        trainer_cls, args, rows, extra = _causal_setup(obj, cfg, records, common)
        trainer = trainer_cls(
            model=AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=_lora(cfg, "CAUSAL_LM"),
            **extra,
        )
    _same_schedule(trainer, cfg)
    metrics = trainer.train().metrics
    trainer.model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    tokens = next((row["num_tokens"] for row in reversed(trainer.state.log_history) if "num_tokens" in row), None)
    (out / "result.json").write_text(json.dumps({"train_runtime": metrics["train_runtime"], "num_tokens": tokens}))


if __name__ == "__main__":
    trl_worker(Path(sys.argv[1]))
