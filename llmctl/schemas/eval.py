"""Profile keys of `llmctl eval` (and `llmctl eval compare`).

Examples:
    resolve_config("eval", "quick", ["perplexity.seqlen=512"], {"limit": 100})
"""

from llmctl.schema import Field, Section

SCHEMA = Section(
    tasks=Field(list, ["hellaswag"], "tasks to run when --tasks is not given (lm-eval names or perplexity)", item=str),
    data_dir=Field(str, None, "local task data (one folder per task family); null = $LLMCTL_DATA_DIR", nullable=True),
    num_fewshot=Field(int, None, "few-shot examples per item; null = the task's default (0 for the offline tasks)",
                      nullable=True, ge=0),
    limit=Field(float, None, "items per task: a count (>= 1) or a fraction in (0, 1); null = all", nullable=True, gt=0),
    batch_size=Field(str, "8", "lm-eval batch size: an integer or auto"),
    seed=Field(int, None, "seed for python/numpy/torch/few-shot sampling; null = lm-eval's defaults (0/1234/1234/1234)",
               nullable=True),
    apply_chat_template=Field(bool, False, "wrap prompts in the model's chat template (lm-eval --apply_chat_template)"),
    system_instruction=Field(str, None, "system instruction put before every prompt", nullable=True),
    log_samples=Field(bool, False, "keep every scored item (written beside --output as JSONL)"),
    bootstrap_iters=Field(int, 100000, "bootstrap iterations for stderrs of non-mean metrics; 0 = none", ge=0),
    dtype=Field(str, "auto", "weights dtype", choices=["auto", "float32", "bfloat16", "float16"]),
    device=Field(str, "auto", "device: auto, cpu, cuda, cuda:N or mps"),
    perplexity=Section(
        "the `perplexity` task (sliding-window log-likelihood over a text file)",
        data=Field(str, None, "text file; null = wikitext/*test*.raw in the data dir", nullable=True),
        seqlen=Field(int, 2048, "window length in tokens (capped at the model's context)", ge=2),
        stride=Field(int, 512, "tokens the window moves each step (<= seqlen)", ge=1),
        batch_size=Field(int, 1, "windows per forward pass", ge=1),
        max_tokens=Field(int, None, "score only the first N tokens of the text; null = all", nullable=True, ge=2),
    ),
)
