"""Settings of `llmctl pretrain`: model architecture and size, RoPE scaling, training, data, processes, spike guard."""

from llmctl.config.schema import Field, Section
from llmctl.schemas._rope import ROPE_RULES, rope_section
from llmctl.schemas._train import dist_section, tracking_section, train_section

SCHEMA = Section(
    rules=ROPE_RULES,
    model=Section(
        "architecture and size of the model trained from scratch (a Hugging Face config)",
        arch=Field(
            str,
            "llama",
            "llama (RMSNorm, SwiGLU, RoPE, GQA) or gpt2 (LayerNorm, GELU, learned positions)",
            choices=["llama", "gpt2"],
        ),
        hidden_size=Field(int, 256, "width of the residual stream", ge=8),
        num_layers=Field(int, 6, "transformer blocks", ge=1),
        num_heads=Field(int, 8, "attention heads (hidden_size must be divisible by it)", ge=1),
        num_kv_heads=Field(
            int, None, "key/value heads for grouped-query attention (llama); null = num_heads", ge=1, nullable=True
        ),
        intermediate_size=Field(
            int, None, "MLP width; null = 8/3 x hidden (llama, rounded to 64) or 4 x hidden (gpt2)", ge=1, nullable=True
        ),
        max_position_embeddings=Field(int, 512, "longest sequence the model can attend over", ge=2),
        rope_theta=Field(float, 10000.0, "RoPE base frequency (llama)", gt=0),
        norm_eps=Field(float, 1e-5, "epsilon of RMSNorm / LayerNorm", gt=0),
        tie_embeddings=Field(bool, True, "share the input embedding and output projection weights"),
        dropout=Field(float, 0.0, "dropout on attention and residual paths", ge=0, lt=1),
        init_std=Field(float, 0.02, "standard deviation of the normal weight init", gt=0),
        vocab_multiple=Field(
            int, 64, "round the embedding rows up to a multiple of this (speed); 1 = exact vocab", ge=1
        ),
    ),
    train=train_section(
        max_steps=2000,
        lr=1e-3,
        warmup_steps=100,
        batch_size=16,
        seq_len=256,
        eval_every=250,
        eval_batches=20,
        save_every=500,
        log_every=10,
    ),
    data=Section(
        "which splits of the tokenized data dir to use",
        train_split=Field(str, "train", "split to train on"),
        val_split=Field(str, "val", "split for validation loss / perplexity / bits per byte; missing = no validation"),
        final_eval_tokens=Field(
            int, 1000000, "tokens of the val split scored at the end (all of it when smaller); 0 skips it", ge=0
        ),
    ),
    rope=rope_section(),
    dist=dist_section(),
    tracking=tracking_section(),
    spike=Section(
        "loss-spike guard: roll back to the last checkpoint with a lower LR when the loss jumps",
        enabled=Field(bool, False, "watch the training loss for spikes"),
        threshold=Field(float, 2.0, "a spike is a loss above this times the mean of the recent window", gt=1),
        window=Field(int, 20, "steps in the running mean the loss is compared with", ge=1),
        lr_factor=Field(float, 0.5, "multiply the learning rate by this after each rollback", gt=0, le=1),
        max_rollbacks=Field(int, 3, "give up rolling back after this many (training goes on)", ge=0),
    ),
)
