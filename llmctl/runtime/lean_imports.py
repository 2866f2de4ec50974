"""Keep scikit-learn and scipy out of every model load: transformers imports them only for features llmctl never uses.

transformers' generation code (imported by every model class) imports `sklearn.metrics.roc_curve` whenever
scikit-learn is installed, for assisted generation's adaptive draft threshold. lm-eval and nncf install
scikit-learn, and its import (with scipy) took ~2 s of each llmctl process's ~4 s start-up on a 2-core Xeon
(`python -c "import transformers.generation.utils"`: 5.99 s → 3.90 s). llmctl does not run assisted
generation, so before that module is imported, transformers' availability flag is turned off; lm-eval and
nncf still import scikit-learn themselves when they need it.

transformers' loss table (imported by every model class through modeling_utils) imports the object-detection
losses, and four of them import `scipy.optimize.linear_sum_assignment` at module level: ~0.35 s of scipy on a
2-core EPYC for a function only DETR-like models call. While those four modules load, transformers' scipy flag
reads False (so they skip the import); afterwards the flag is back and each gets a stand-in that imports scipy
on its first call and then behaves as the real function.

`import transformers` scans every model folder's source (~900 files, 0.5–0.8 s on a 2-core EPYC) to learn which
names each module exports (`create_import_structure_from_path`): a pure function of the installed files. The
result for transformers' models folder is kept as JSON under $LLMCTL_HOME/cache/, keyed by the transformers
version and the path, size and mtime of every file scanned, and read back (~20 ms) while the files are unchanged.

Examples:
    install()        # once, from llmctl/__init__.py; costs nothing until transformers is imported
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys

# the pinned transformers 4.57.6 sets these flags once at import and reads them before importing in the gated
# modules; if a later version renames any, nothing breaks: the library is imported again (the tests then fail)
_GATED = "transformers.generation.candidate_generator"
_FLAGS = "transformers.utils.import_utils"
_SCIPY_GATED = frozenset(
    f"transformers.loss.{name}"
    for name in ("loss_for_object_detection", "loss_deformable_detr", "loss_rt_detr", "loss_grounding_dino")
)


def linear_sum_assignment(*args, **kwargs):
    """scipy.optimize.linear_sum_assignment, imported on first call (the detection losses' only scipy use)."""
    from scipy.optimize import linear_sum_assignment as real

    return real(*args, **kwargs)


class _WithoutScipy:
    """Wraps a gated module's loader: the module runs with scipy reported absent, then gets the lazy stand-in."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_source, get_filename, is_package…: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        flags = sys.modules[_FLAGS]
        was = flags._scipy_available
        flags._scipy_available = False
        try:
            self.loader.exec_module(module)
        finally:
            flags._scipy_available = was
        if was and not hasattr(module, "linear_sum_assignment"):
            module.linear_sum_assignment = linear_sum_assignment


class _CachedImportStructure:
    """Wraps transformers.utils.import_utils' loader: after it runs, its folder scan reads the models folder's cache."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        scan = getattr(module, "create_import_structure_from_path", None)
        if scan is not None and getattr(module, "__file__", None):
            models = os.path.realpath(os.path.join(os.path.dirname(module.__file__), "..", "models"))
            module.create_import_structure_from_path = _cached_scan(scan, models)


def _cached_scan(scan, models: str):
    """`scan` (transformers' folder scan), answered from the JSON cache for the `models` folder itself."""
    texts: dict[str, str] = {}

    def create_import_structure_from_path(module_path):
        path = os.path.realpath(os.fspath(module_path))
        if os.path.isfile(path):
            path = os.path.dirname(path)
        if path != models:
            return scan(module_path)
        if path not in texts:
            texts[path] = _read_or_build(scan, path)
        return _decode(json.loads(texts[path]))  # a fresh copy per call, as the callers may change it

    return create_import_structure_from_path


def _fingerprint(folder: str) -> str:
    """A digest of the transformers version and every scanned file's path, size and mtime (~10 ms)."""
    digest = hashlib.sha256(sys.modules["transformers"].__version__.encode() if "transformers" in sys.modules else b"")
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _cache_file(folder: str) -> str | None:
    try:
        from llmctl.paths import llmctl_home

        return str(llmctl_home(create=False) / "cache" / f"transformers-imports-{_fingerprint(folder)}.json")
    except Exception:  # no home, unreadable files: scan as transformers would
        return None


def _read_or_build(scan, folder: str) -> str:
    """The cached scan of `folder` as JSON text, scanning (and saving, temp file then rename) when absent."""
    cache = _cache_file(folder)
    if cache is not None:
        try:
            with open(cache, encoding="utf-8") as f:
                return f.read()
        except OSError:
            pass
    text = json.dumps(_encode(scan(folder)))
    if cache is not None:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, cache)
        except OSError:  # a read-only home only costs the scan next time
            pass
    return text


def _encode(value):
    """An import structure (dicts keyed by folder names or frozensets of backends, sets of names) as JSON data."""
    if isinstance(value, dict):
        return {"d": [[{"f": sorted(k)} if isinstance(k, frozenset) else k, _encode(v)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"s": sorted(value)}
    raise TypeError(f"unexpected {type(value).__name__} in transformers' import structure")


def _decode(data):
    if "s" in data:
        return set(data["s"])
    return {frozenset(k["f"]) if isinstance(k, dict) else k: _decode(v) for k, v in data["d"]}


class _LeanTransformers:
    """A meta-path finder that only adjusts transformers' flags as the gated modules load; it finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name == _GATED and _FLAGS in sys.modules:
            sys.modules[_FLAGS]._sklearn_available = False
        if name == _FLAGS:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _CachedImportStructure(spec.loader)
                return spec
        if name in _SCIPY_GATED and _FLAGS in sys.modules and getattr(sys.modules[_FLAGS], "_scipy_available", False):
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _WithoutScipy(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on sys.meta_path (once)."""
    if not any(isinstance(f, _LeanTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _LeanTransformers())
