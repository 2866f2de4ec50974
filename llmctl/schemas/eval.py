"""Profile keys of `llmctl eval` (and `llmctl eval compare`).

Examples:
    resolve_config("eval", "quick", ["perplexity.seqlen=512"], {"limit": 100})
"""

from llmctl.config.schema import Field, Rule, Section, device_field, dtype_field
from llmctl.schemas._rope import ROPE_RULES, rope_section


def _batch_size_ok(value: str) -> bool:
    """lm-eval's batch size: N >= 1, `auto`, or `auto:N` (re-detect N times)."""
    text = value.strip().lower()
    number = text.removeprefix("auto:") if text.startswith("auto:") else text
    return text == "auto" or (number.isdigit() and int(number) >= 1)


def _named(tasks) -> set[str]:
    """The task names of a `tasks` value (items may be comma lists, as --tasks takes them)."""
    return {name.strip() for item in tasks or [] for name in str(item).split(",")}


def _increasing(values: list, least: int) -> bool:
    """Non-empty, each at least `least`, strictly increasing."""
    return bool(values) and values[0] >= least and all(b > a for a, b in zip(values, values[1:]))


SCHEMA = Section(
    rules=(
        Rule(
            ("perplexity.stride", "perplexity.seqlen"),
            lambda stride, seqlen: stride <= seqlen,
            "perplexity.stride must be at most perplexity.seqlen",
        ),
        Rule(
            ("tasks", "reward_model"),
            lambda tasks, reward_model: "win_rate" not in _named(tasks) or reward_model is not None,
            "--tasks win_rate needs --reward-model RM (a model made by finetune --objective reward)",
            nullable=True,
        ),
        Rule(
            ("tasks", "reference"),
            lambda tasks, reference: "win_rate" not in _named(tasks) or reference is not None,
            "--tasks win_rate needs --reference MODEL (the model whose answers it is compared with)",
            nullable=True,
        ),
        Rule(
            ("reward_model", "tasks"),
            lambda reward_model, tasks: "win_rate" in _named(tasks),
            "--reward-model is for --tasks win_rate (reward_accuracy scores the reward model given as --model)",
        ),
        Rule(
            ("reference", "tasks"),
            lambda reference, tasks: bool(_named(tasks) & {"win_rate", "preference_accuracy"}),
            "--reference is for --tasks win_rate or preference_accuracy",
        ),
        *ROPE_RULES,
    ),
    tasks=Field(
        list,
        ["hellaswag"],
        "tasks to run when --tasks is not given (lm-eval names, perplexity, passkey, reward_accuracy, exact_match, "
        "win_rate, preference_accuracy)",
        item=str,
    ),
    data=Field(
        str,
        None,
        "the file of the one file-reading task run (perplexity: text; reward_accuracy, preference_accuracy: "
        "preference pairs; exact_match: {prompt, answer} records; win_rate: prompts); <task>.data names each "
        "when several run",
        nullable=True,
    ),
    data_dir=Field(str, None, "local task data (one folder per task family); null = $LLMCTL_DATA_DIR", nullable=True),
    num_fewshot=Field(
        int,
        None,
        "few-shot examples per item; null = the task's default (0 for the offline tasks)",
        nullable=True,
        ge=0,
    ),
    limit=Field(
        float,
        None,
        "items per task: a count (>= 1) or a fraction in (0, 1); null = all",
        nullable=True,
        check=lambda v: 0 < v < 1 or (v >= 1 and float(v).is_integer()),
        rule="a whole count of at least 1 or a fraction in (0, 1)",
    ),
    batch_size=Field(
        str,
        "8",
        "lm-eval batch size: an integer or auto",
        check=_batch_size_ok,
        rule="a whole number of at least 1, auto, or auto:N",
    ),
    seed=Field(
        int,
        None,
        "seed for python/numpy/torch/few-shot sampling; null = lm-eval's defaults (0/1234/1234/1234)",
        nullable=True,
    ),
    apply_chat_template=Field(bool, False, "wrap prompts in the model's chat template (lm-eval --apply_chat_template)"),
    system_instruction=Field(str, None, "system instruction put before every prompt", nullable=True),
    log_samples=Field(bool, False, "keep every scored item (written beside --output as JSONL)"),
    bootstrap_iters=Field(int, 100000, "bootstrap iterations for stderrs of non-mean metrics; 0 = none", ge=0),
    dtype=dtype_field("auto", "weights dtype; auto = the checkpoint's own"),
    device=device_field(),
    perplexity=Section(
        "the `perplexity` task (sliding-window log-likelihood over a text file)",
        data=Field(str, None, "text file; null = wikitext/*test*.raw in the data dir", nullable=True),
        seqlen=Field(int, 2048, "window length in tokens (capped at the model's context)", ge=2),
        stride=Field(
            int, None, "tokens the window moves each step (<= seqlen); null = min(512, seqlen)", ge=1, nullable=True
        ),
        batch_size=Field(int, 1, "windows per forward pass", ge=1),
        max_tokens=Field(int, None, "score only the first N tokens of the text; null = all", nullable=True, ge=2),
        length_buckets=Field(
            list,
            None,
            "perplexity by token position: bucket ends in tokens (windows of the last, not overlapping); null = off",
            item=int,
            nullable=True,
            check=lambda v: _increasing(v, 2),
            rule="increasing whole numbers of at least 2",
        ),
    ),
    passkey=Section(
        "the `passkey` task: a number hidden at several depths of filler text, retrieved greedily",
        context_lengths=Field(
            list,
            [1024, 2048, 4096],
            "prompt lengths in tokens",
            item=int,
            check=lambda v: _increasing(v, 64),
            rule="increasing whole numbers of at least 64",
        ),
        depths=Field(
            list,
            [0.0, 0.25, 0.5, 0.75, 1.0],
            "where the key sits in the filler: 0 = start, 1 = end",
            item=float,
            check=lambda v: bool(v) and all(0 <= d <= 1 for d in v),
            rule="fractions from 0 to 1",
        ),
        samples=Field(int, 2, "prompts per (length, depth) cell, each with another key", ge=1),
        digits=Field(int, 5, "digits of each pass key", ge=1, le=12),
    ),
    reward_accuracy=Section(
        "the `reward_accuracy` task (a reward model on preference pairs: pair accuracy, mean margin)",
        data=Field(str, None, "preference file (any preference layout); null = the top-level data key", nullable=True),
        batch_size=Field(int, 8, "pairs per forward pass", ge=1),
        seq_len=Field(int, 1024, "tokens per prompt + reply at most (replies are truncated)", ge=2),
        max_pairs=Field(int, None, "score only the first N pairs; null = all", nullable=True, ge=1),
    ),
    reward_model=Field(
        str,
        None,
        "win_rate: the reward model scoring both models' answers (a finetune --objective reward entry)",
        nullable=True,
    ),
    reference=Field(
        str,
        None,
        "win_rate: the model compared with; preference_accuracy: the reference of the implicit reward "
        "(log-ratio, as DPO/IPO/KTO use it); null there = the policy's own length-normalised margin (ORPO/SimPO)",
        nullable=True,
    ),
    exact_match=Section(
        "the `exact_match` task: greedy answers (the model's chat template) to {prompt, answer} records",
        data=Field(str, None, "records file; null = the top-level data key", nullable=True),
        extract=Field(
            str,
            "number",
            "what is compared with the answer: number (the last number, as GRPO's math_exact reward reads it), "
            "last_line (the last non-empty line), exact (the whole answer); stripped of surrounding spaces",
            choices=["number", "last_line", "exact"],
        ),
        max_new_tokens=Field(int, 64, "tokens generated per answer at most", ge=1),
        batch_size=Field(int, 8, "prompts per generate call", ge=1),
        max_records=Field(int, None, "score only the first N records; null = all", nullable=True, ge=1),
    ),
    win_rate=Section(
        "the `win_rate` task: greedy answers of --model and --reference to the same prompts, scored by --reward-model",
        data=Field(
            str,
            None,
            "prompts file ({prompt} records or preference pairs); null = the top-level data key",
            nullable=True,
        ),
        max_new_tokens=Field(int, 64, "tokens generated per answer at most", ge=1),
        batch_size=Field(int, 8, "prompts per generate call", ge=1),
        seq_len=Field(int, 512, "prompt tokens at most (longer prompts are dropped and counted)", ge=2),
        max_prompts=Field(int, None, "score only the first N prompts; null = all", nullable=True, ge=1),
    ),
    preference_accuracy=Section(
        "the `preference_accuracy` task: the policy's implicit reward ranks chosen above rejected",
        data=Field(str, None, "preference file (any preference layout); null = the top-level data key", nullable=True),
        batch_size=Field(int, 8, "pairs per forward pass", ge=1),
        seq_len=Field(int, 1024, "tokens per prompt + reply at most (replies are truncated)", ge=2),
        max_pairs=Field(int, None, "score only the first N pairs; null = all", nullable=True, ge=1),
    ),
    rope=rope_section(),
)
