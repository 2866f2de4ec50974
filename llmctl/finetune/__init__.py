"""`llmctl finetune`, split along its concepts.

- `model`: the base (fp32, NF4 for QLoRA, reward head) and the method's wrapper (LoRA, DoRA, prompt tuning, full)
- `objectives`: the one table of objectives (sft, dpo, reward): data, batches, loss, evaluation
- `batches`: deterministic micro-batches; `loop`: set up, step, evaluate, checkpoint
- `parallel`: one process or many (torchrun DDP / FSDP2): each rank's micro-batches, the wrapped loss, state
- `service`: `finetune()`: every check first, then the loop, then the registry entry

Examples:
    from llmctl.finetune import finetune
    finetune("smollm2-135m-instruct", Path("alpaca.json"), "smol-lora", resolve_config("finetune", "lora"))
"""

from llmctl.finetune.service import FinetuneResult, finetune

__all__ = ["FinetuneResult", "finetune"]
