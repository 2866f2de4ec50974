"""`python -m llmctl …`: the same entry point as the `llmctl` console script.

Examples:
    python -m llmctl models list
"""

from llmctl.cli._entry import run

if __name__ == "__main__":
    run()
