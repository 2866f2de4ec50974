"""Keep scikit-learn out of every model load: transformers imports it only for a feature llmctl never uses.

transformers' generation code (imported by every model class) imports `sklearn.metrics.roc_curve` whenever
scikit-learn is installed, for assisted generation's adaptive draft threshold. lm-eval and nncf install
scikit-learn, and its import (with scipy) took ~2 s of each llmctl process's ~4 s start-up on a 2-core Xeon
(`python -c "import transformers.generation.utils"`: 5.99 s → 3.90 s). llmctl does not run assisted
generation, so before that module is imported, transformers' availability flag is turned off; lm-eval and
nncf still import scikit-learn themselves when they need it.

Examples:
    install()        # once, from llmctl/__init__.py; costs nothing until transformers is imported
"""

from __future__ import annotations

import sys

# the pinned transformers 4.57.6 sets this flag once at import and reads it before importing sklearn in _GATED;
# if a later version renames either, nothing breaks: scikit-learn is imported again (the test then fails)
_GATED = "transformers.generation.candidate_generator"
_FLAGS = "transformers.utils.import_utils"


class _SkipSklearnInTransformers:
    """A meta-path finder that finds nothing: it only flips transformers' flag as the gated module loads."""

    def find_spec(self, name, path=None, target=None):
        if name == _GATED and _FLAGS in sys.modules:
            sys.modules[_FLAGS]._sklearn_available = False
        return None


def install() -> None:
    """Put the finder first on sys.meta_path (once)."""
    if not any(isinstance(f, _SkipSklearnInTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipSklearnInTransformers())
