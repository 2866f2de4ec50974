"""The training knobs shared by `pretrain` and `finetune` (one definition, used by both schemas).

Examples:
    SCHEMA = Section(train=train_section(lr=2e-4, max_steps=300), dist=dist_section(), ...)
"""

from llmctl.config.schema import Field, Section, device_field, dtype_field


def train_section(**defaults) -> Section:
    """The `train:` section; keyword arguments change its defaults for one command."""
    d = dict(
        max_steps=1000,
        epochs=None,
        lr=3e-4,
        min_lr_ratio=0.1,
        warmup_steps=100,
        batch_size=8,
        grad_accum=1,
        seq_len=256,
        seed=1234,
        eval_every=200,
        eval_batches=20,
        save_every=500,
        log_every=10,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
        dtype="auto",
        device="auto",
        compile=False,
    )
    d.update(defaults)
    return Section(
        "optimisation and schedule",
        max_steps=Field(int, d["max_steps"], "optimizer steps to run (ignored when epochs is set)", ge=1),
        epochs=Field(
            float, d["epochs"], "passes over the training data; sets max_steps when given", gt=0, nullable=True
        ),
        lr=Field(float, d["lr"], "peak learning rate after warmup", gt=0),
        min_lr_ratio=Field(float, d["min_lr_ratio"], "cosine decay floor as a fraction of lr", ge=0, le=1),
        warmup_steps=Field(int, d["warmup_steps"], "linear warmup steps from 0 to lr", ge=0),
        batch_size=Field(int, d["batch_size"], "sequences per micro-batch", ge=1),
        grad_accum=Field(int, d["grad_accum"], "micro-batches per optimizer step", ge=1),
        seq_len=Field(int, d["seq_len"], "tokens per training sequence", ge=2),
        seed=Field(int, d["seed"], "random seed for init, data order and dropout"),
        eval_every=Field(int, d["eval_every"], "steps between validation runs; 0 disables", ge=0),
        eval_batches=Field(int, d["eval_batches"], "validation batches per evaluation", ge=1),
        save_every=Field(int, d["save_every"], "steps between checkpoints; 0 saves only at the end", ge=0),
        log_every=Field(int, d["log_every"], "steps between log lines", ge=1),
        weight_decay=Field(float, d["weight_decay"], "AdamW weight decay (not applied to norms and biases)", ge=0),
        beta1=Field(float, d["beta1"], "AdamW beta1", ge=0, lt=1),
        beta2=Field(float, d["beta2"], "AdamW beta2", ge=0, lt=1),
        grad_clip=Field(float, d["grad_clip"], "clip the global gradient norm to this; 0 disables", ge=0),
        dtype=dtype_field(
            d["dtype"], "compute dtype: auto (bf16 autocast where supported), float32, bfloat16 or float16"
        ),
        device=device_field(d["device"]),
        compile=Field(bool, d["compile"], "torch.compile the model"),
        gradient_checkpointing=Field(
            bool,
            False,
            "recompute each block's activations in the backward pass: activation memory falls to the blocks' "
            "inputs plus one block's, for about a third more compute per step",
        ),
        ignore_memory_check=Field(
            bool, False, "start even when the estimated peak memory (see --dry-run) exceeds the free memory"
        ),
    )


def dist_section() -> Section:
    """The `dist:` section: how many processes under torchrun share the work (ignored in a single process)."""
    return Section(
        "multi-process training (under torchrun); ignored in a single process",
        strategy=Field(
            str,
            "ddp",
            "ddp (replicate the model) or fsdp (shard parameters, gradients, optimizer)",
            choices=["ddp", "fsdp"],
        ),
        backend=Field(
            str,
            "auto",
            "process group backend: auto (nccl on GPU, gloo on CPU), nccl or gloo",
            choices=["auto", "nccl", "gloo"],
        ),
    )


# Where a training run's metrics go: the local files (TensorBoard event files, metrics.csv) and the experiment
# trackers (MLflow, W&B). metrics.jsonl and loss.png are always written: resume and the registry read them.
REPORTERS = ["tensorboard", "csv", "mlflow", "wandb"]


def tracking_section() -> Section:
    """The `tracking:` section: `--report-to` and the experiment (MLflow experiment, W&B project) runs go to."""
    return Section(
        "where metrics are reported (metrics.jsonl and loss.png are always written in the run dir)",
        report_to=Field(
            list,
            ["tensorboard", "csv"],
            "where metrics go, comma-separated: tensorboard (event files), csv (metrics.csv), mlflow "
            "(MLFLOW_TRACKING_URI, else a local store under LLMCTL_HOME), wandb (offline unless WANDB_MODE is set)",
            item=str,
            choices=REPORTERS,
        ),
        experiment=Field(str, "llmctl", "MLflow experiment / W&B project the run is logged in"),
    )
