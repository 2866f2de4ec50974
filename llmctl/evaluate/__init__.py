"""`llmctl eval`, split along its concepts.

- `tasks`: which tasks run where (lm-eval names, offline configs, limits, few-shot checks)
- `gates`: `--fail-under` gates and `task.metric` flattening
- `service`: `run_eval()` (load once, score with lm-eval / perplexity, attach, write results)
- `compare`: `llmctl eval compare`

Examples:
    from llmctl.evaluate import run_eval
    run_eval("smollm2-135m-instruct", ["hellaswag"], resolve_config("eval", explicit={"limit": 200}))
"""

from llmctl.evaluate.compare import compare, plot_compare
from llmctl.evaluate.gates import Gate, evaluate_gates, flatten, parse_gates
from llmctl.evaluate.service import EvalResult, make_lm, run_eval, write_results
from llmctl.evaluate.tasks import lmeval_task_manager, parse_limit, parse_tasks, plan_tasks

__all__ = [
    "EvalResult",
    "Gate",
    "compare",
    "evaluate_gates",
    "flatten",
    "lmeval_task_manager",
    "make_lm",
    "parse_gates",
    "parse_limit",
    "parse_tasks",
    "plan_tasks",
    "plot_compare",
    "run_eval",
    "write_results",
]
