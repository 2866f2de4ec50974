"""Settings of `llmctl finetune`: method, objective, data handling, LoRA/QLoRA/prompt options, training, processes,
and each objective's hyper-parameters (defaults from the papers or TRL, named per key)."""

import re

from llmctl.config.schema import Field, Rule, Section, dtype_field
from llmctl.data import layouts
from llmctl.schemas._rope import ROPE_RULES, rope_section
from llmctl.schemas._train import dist_section, tracking_section, train_section

METHODS = ["full", "lora", "qlora", "dora", "prompt-tuning", "prefix-tuning"]
OBJECTIVES = ["sft", "dpo", "ipo", "kto", "orpo", "simpo", "reward", "ppo", "grpo"]
ON_POLICY = ("ppo", "grpo")
REWARD_RULES = ("math_exact", "format_regex")


def _reward_spec_ok(value: str) -> bool:
    """math_exact, format_regex or python:FILE:FUNC (the file is checked when the run starts)."""
    if value in REWARD_RULES:
        return True
    parts = value.split(":")
    return value.startswith("python:") and len(parts) >= 3 and all(p for p in (":".join(parts[1:-1]), parts[-1]))


def _regex_ok(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


SCHEMA = Section(
    rules=(
        *ROPE_RULES,
        Rule(
            ("objective", "reward.model", "reward.function"),
            lambda objective, model, function: objective not in ON_POLICY or (model is None) != (function is None),
            "--objective ppo and grpo need one reward: --reward-model NAME or --reward RULE (not both)",
            nullable=True,
        ),
        Rule(
            ("reward.model", "objective"),
            lambda model, objective: objective in ON_POLICY,
            "--reward-model is for --objective ppo or grpo",
        ),
        Rule(
            ("reward.function", "objective"),
            lambda function, objective: objective in ON_POLICY,
            "--reward is for --objective ppo or grpo",
        ),
        Rule(
            ("train.batch_size", "objective"),
            lambda batch_size, objective: objective != "kto" or batch_size >= 2,
            "kto needs train.batch_size of at least 2 (its KL baseline pairs each prompt with another "
            "example's completion)",
        ),
    ),
    method=Field(
        str, "lora", "what is trained: full weights, LoRA/QLoRA/DoRA adapters, or virtual tokens", choices=METHODS
    ),
    objective=Field(
        str,
        "sft",
        "sft (next-token loss on responses); dpo, ipo, kto, orpo, simpo (preference data); reward (scalar reward "
        "head, pairwise loss); ppo, grpo (generate from prompts, scored by --reward-model or --reward)",
        choices=OBJECTIVES,
    ),
    data=Section(
        "training data",
        format=Field(
            str,
            "auto",
            "data format; auto detects it from the fields",
            choices=["auto", *layouts.names()],
        ),
        template=Field(
            str,
            "auto",
            "prompt template: auto (the model's chat template, else alpaca), model, chatml or alpaca",
            choices=["auto", "model", "chatml", "alpaca"],
        ),
        eval_split=Field(
            float,
            0.05,
            "held-out examples taken from the end of the file: a fraction (< 1) or a count (>= 1); 0 disables",
            ge=0,
        ),
        packing=Field(bool, True, "pack short examples into full sequences (no attention across examples)"),
        max_examples=Field(int, None, "use only the first N records", ge=1, nullable=True),
    ),
    lora=Section(
        "LoRA / QLoRA / DoRA adapter",
        r=Field(int, 16, "adapter rank", ge=1),
        alpha=Field(float, 32.0, "scaling numerator: updates are scaled by alpha / r", gt=0),
        dropout=Field(float, 0.05, "dropout on the adapter input", ge=0, lt=1),
        target_modules=Field(
            list, ["all-linear"], "module names to adapt; all-linear = every linear layer but the output head", item=str
        ),
        bias=Field(str, "none", "which biases to train", choices=["none", "all", "lora_only"]),
    ),
    qlora=Section(
        "4-bit base for QLoRA (bitsandbytes)",
        quant_type=Field(str, "nf4", "4-bit data type", choices=["nf4", "fp4"]),
        double_quant=Field(bool, True, "also quantize the quantization constants"),
        compute_dtype=dtype_field("bfloat16", "dtype of the dequantized matmuls", auto=False),
    ),
    prompt=Section(
        "prompt-tuning and prefix-tuning",
        num_virtual_tokens=Field(int, 20, "trained virtual tokens", ge=1),
        init_text=Field(str, None, "prompt-tuning: initialise the virtual tokens from this text", nullable=True),
    ),
    dpo=Section(
        "direct preference optimisation",
        beta=Field(float, 0.1, "strength of the KL anchor to the reference model", gt=0),
        loss=Field(
            str,
            "sigmoid",
            "sigmoid: −log σ(β·margin) (the paper); hinge: max(0, 1 − β·margin) (SLiC; TRL's loss_type hinge)",
            choices=["sigmoid", "hinge"],
        ),
    ),
    ipo=Section(
        "identity preference optimisation (Azar et al. 2023; length-averaged log-ratios, as TRL)",
        beta=Field(float, 0.1, "τ: the loss pulls the log-ratio margin towards 1/(2τ) (TRL's default)", gt=0),
    ),
    kto=Section(
        "Kahneman-Tversky optimisation (Ethayarajh et al. 2024; defaults as TRL's KTOConfig)",
        beta=Field(float, 0.1, "sharpness of the value function around the KL reference point", gt=0),
        desirable_weight=Field(float, 1.0, "λ_D: weight of desirable (label true, chosen) examples", gt=0),
        undesirable_weight=Field(float, 1.0, "λ_U: weight of undesirable (label false, rejected) examples", gt=0),
    ),
    orpo=Section(
        "odds-ratio preference optimisation (Hong et al. 2024)",
        beta=Field(float, 0.1, "λ: weight of the odds-ratio term added to the chosen reply's NLL (the paper's)", gt=0),
        nll=Field(
            str,
            "response",
            "response: mean NLL of the chosen reply's tokens per pair (the paper's L_SFT); sequence: prompt and reply "
            "tokens, one mean over the micro-batch's tokens (TRL's ORPOTrainer)",
            choices=["response", "sequence"],
        ),
    ),
    simpo=Section(
        "simple preference optimisation (Meng et al. 2024; the SimPO repo's defaults)",
        beta=Field(float, 2.0, "scale of the length-normalised log-likelihood margin", gt=0),
        gamma=Field(float, 1.0, "target margin γ (γ/β = 0.5, the repo's gamma_beta_ratio)", ge=0),
    ),
    reward=Section(
        "the reward of ppo and grpo: a registry reward model or a function",
        model=Field(str, None, "reward model (made by --objective reward) scoring prompt + answer", nullable=True),
        function=Field(
            str,
            None,
            "math_exact (last number equals the record's answer), format_regex (answer matches reward.pattern) "
            "or python:FILE:FUNC, FUNC(prompt, completion, **fields) -> float from a file you name",
            nullable=True,
            check=_reward_spec_ok,
            rule="math_exact, format_regex or python:FILE:FUNC",
        ),
        pattern=Field(
            str,
            r"<think>.*?</think>\s*<answer>.*?</answer>",
            "format_regex: the whole answer must match this regex (dot matches newlines)",
            check=_regex_ok,
            rule="a Python regular expression",
        ),
    ),
    rollout=Section(
        "sampling of ppo and grpo answers",
        max_new_tokens=Field(int, 64, "tokens generated per answer at most", ge=1),
        temperature=Field(float, 1.0, "sampling temperature (log-probs are taken at it too)", gt=0),
        top_k=Field(int, 0, "sample among the k likeliest tokens; 0 = all", ge=0),
        top_p=Field(float, 1.0, "nucleus sampling mass", gt=0, le=1),
    ),
    ppo=Section(
        "PPO (defaults as TRL's PPOConfig; adaptive KL as Ziegler et al. 2019)",
        rollout_batch=Field(int, 16, "prompts sampled per step (one rollout)", ge=1),
        epochs=Field(
            int, 4, "passes of mini-batch updates over each rollout (mini-batch = batch_size × grad_accum)", ge=1
        ),
        kl_coef=Field(float, 0.05, "per-token KL penalty to the reference (start value when target_kl is set)", ge=0),
        target_kl=Field(
            float, None, "adapt kl_coef towards this KL per answer (nats); null = fixed", gt=0, nullable=True
        ),
        horizon=Field(int, 10000, "adaptive KL horizon (samples)", ge=1),
        gamma=Field(float, 1.0, "discount of GAE", ge=0, le=1),
        lam=Field(float, 0.95, "λ of GAE", ge=0, le=1),
        clip=Field(float, 0.2, "policy ratio clip ε", gt=0),
        clip_value=Field(float, 0.2, "value clip around the rollout's values", gt=0),
        vf_coef=Field(float, 0.1, "weight of the value loss", ge=0),
    ),
    grpo=Section(
        "GRPO (Shao et al. 2024)",
        num_generations=Field(int, 8, "answers sampled per prompt (a group; TRL's default)", ge=2),
        beta=Field(float, 0.04, "weight of the per-token KL to the reference (the paper's); 0 = no reference", ge=0),
        epsilon=Field(float, 0.2, "policy ratio clip ε (the lower side, and the upper one unless epsilon_high)", gt=0),
        epsilon_high=Field(
            float, None, "upper ratio clip (DAPO's clip-higher, e.g. 0.28); null = epsilon", gt=0, nullable=True
        ),
        epochs=Field(int, 1, "updates per batch of groups (μ); 1 = the ratio is always 1", ge=1),
        scale_rewards=Field(bool, True, "divide each group's centred rewards by its standard deviation"),
        kl_ratio=Field(
            bool,
            False,
            "weight the per-token KL by the policy ratio, whose gradient is then the reverse KL's (DeepSeek-V3.2; "
            "TRL's use_bias_correction_kl, on by default there); false = the GRPO paper's plain KL term",
        ),
        loss_type=Field(
            str,
            "grpo",
            "how per-token losses are averaged (TRL's names): grpo, each answer's token mean then the mean over "
            "answers (the paper); dapo, one mean over all the step's answer tokens; dr_grpo, the sum over answer "
            "tokens / (answers × rollout.max_new_tokens) (Dr. GRPO, with grpo.scale_rewards false)",
            choices=["grpo", "dapo", "dr_grpo"],
        ),
    ),
    train=train_section(
        lr=2e-4,
        max_steps=300,
        warmup_steps=20,
        batch_size=8,
        seq_len=512,
        eval_every=50,
        eval_batches=25,
        save_every=100,
        log_every=10,
        weight_decay=0.0,
        beta2=0.999,
    ),
    rope=rope_section(),
    dist=dist_section(),
    tracking=tracking_section(),
)
