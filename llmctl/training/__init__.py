"""The one training policy shared by `pretrain` and `finetune`.

- `optim`: AdamW with weight-decay groups, warmup + cosine schedule, one optimizer step (clip, scale, step)
- `precision`: which compute dtype `auto` means here, bf16 autocast, fp16 autocast with a gradient scaler
- `run_dir`: `$LLMCTL_HOME/runs/NAME`: refused without `--resume`/`--force`, replaced only once the new run writes
- `state`: seeds and RNG states, atomic resumable checkpoints
- `metrics`: metrics.jsonl / metrics.csv / TensorBoard / loss.png, as `tracking.report_to` asks
- `tracking`: MLflow and W&B runs (`--report-to mlflow,wandb`), and registry metrics sent to the producing run
- `dist`: torchrun (DDP / FSDP2) set-up, decoder layers to shard, portable full state dicts

Examples:
    run = open_run_dir("my-run", resume=False, force=False)
    precision = Precision.for_run("auto", "cpu")
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
"""
