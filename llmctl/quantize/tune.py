"""Accuracy-aware quantization: neural-compressor's `autotune` over a list of INC weight-only configs.

Trials go from the asked configuration towards safer ones (asymmetric grid, smaller groups, the
other algorithms, finally 8-bit) and stop at the first whose held-out perplexity is at most
(1 + max_loss) × the full-precision perplexity. INC's criterion is "score ≥ baseline·(1 − tol)" for
a higher-is-better score; with score = 1/perplexity and tol = 1 − 1/(1 + max_loss) that is exactly
ppl_q ≤ (1 + max_loss)·ppl_fp.

Examples:
    tune("smollm2-135m-instruct", Registry().reserve("smol-tuned"), resolve_config("quantize", None,
         ["algo=gptq", "max_loss=0.01", "calib.data=wiki.test.raw"], {}))
"""

from __future__ import annotations

import copy
import time

from llmctl.errors import GateFailed, LlmctlError
from llmctl.runtime.progress import Progress, quiet

TUNABLE = ("rtn", "gptq", "awq")


def label(c: dict) -> str:
    group = f"g{c['group_size']}" if c["group_size"] > 0 else "per-channel"
    return f"{c['algo']} {c['bits']}-bit {'sym' if c['sym'] else 'asym'} {group}"


def candidates(config: dict) -> list[dict]:
    """Configurations to try, the asked one first, then steadily safer ones; no duplicates."""
    algo, bits, group, sym = config["algo"] or "rtn", config["bits"], config["group_size"], config["sym"]
    others = [a for a in ("gptq", "awq", "rtn") if a != algo]
    steps = [(algo, bits, group, sym), (algo, bits, group, False)]
    g = group
    while g > 32:
        g //= 2
        steps.append((algo, bits, g, False))
    steps += [(a, bits, min(group, 128) if group > 0 else 128, False) for a in others]
    steps += [(a, bits, 32, False) for a in [algo, *others]]
    if bits < 8:
        steps += [(algo if algo != "awq" else "rtn", 8, 128, True), ("rtn", 8, -1, True)]
    out, seen = [], set()
    for a, b, gs, s in steps:
        key = (a, b, gs, s)
        if key in seen:
            continue
        seen.add(key)
        c = copy.deepcopy(config)
        c.update(algo=a, bits=b, group_size=gs, sym=s)
        out.append(c)
    return out


def tune(model: str, reservation, config: dict, command: str = "", progress: Progress | None = None) -> dict:
    """Run the accuracy-aware search, register the first configuration within max_loss, report every trial."""
    from llmctl.compress.recipe import load_source
    from llmctl.quantize.support import check_linear_layers

    say = progress or quiet
    check_tunable(config)

    def check(loaded) -> None:
        if config["save_format"] == "compressed-tensors":
            check_linear_layers(loaded.model)

    # no baseline pass here: autotune scores the unquantized model first (Trials.baseline)
    src = load_source(model, config, "quantize", need_calib=True, say=say, check=check, baseline=False)
    trials = Trials(candidates(config)[: config["max_trials"]], config["max_loss"], src, config["eval"]["seqlen"], say)
    started = time.perf_counter()
    best = _search(src, trials, config)
    seconds = round(time.perf_counter() - started, 1)
    chosen = trials.chosen()
    final_cfg = trials.configs[chosen["trial"] - 1]
    resolved_cfg = {**final_cfg, "max_loss": config["max_loss"], "max_trials": config["max_trials"]}
    meta = _save(reservation, best, src, trials, final_cfg, resolved_cfg, command, seconds)
    return {
        "name": reservation.name,
        "format": meta.pop("_format"),
        "parent": src.parent,
        "path": str(reservation.path),
        "relative_ppl_increase": chosen["relative_increase"],
        **meta,
    }


def check_tunable(config: dict) -> None:
    """What accuracy-aware mode needs beyond the schema: INC's algorithms, calibration and held-out text."""
    if config["backend"] not in (None, "inc"):  # the trials run neural-compressor's algorithms
        raise LlmctlError(
            "accuracy-aware mode (--max-loss) works with the inc backend",
            hint=f"drop --backend {config['backend']} or --max-loss",
        )
    algo = config["algo"] or "rtn"
    if algo not in TUNABLE:
        raise LlmctlError(
            f"accuracy-aware mode tunes {', '.join(TUNABLE)}, not {algo}",
            hint="pick --algo rtn, gptq or awq with --max-loss",
        )
    if not config["calib"]["data"]:
        raise LlmctlError(
            "accuracy-aware mode needs calibration data (its tail is the held-out text)",
            hint="pass --calib-data FILE (and optionally --eval-data FILE)",
        )
    if not config["eval"]["tokens"]:
        raise LlmctlError("accuracy-aware mode needs held-out perplexity", hint="use --eval-tokens > 0")


class Trials:
    """autotune's eval_fn: the first call scores the full-precision model (the baseline), each later one a trial."""

    def __init__(self, configs: list[dict], max_loss: float, src, seqlen: int, say: Progress):
        self.configs, self.max_loss, self.src, self.seqlen, self.say = configs, max_loss, src, seqlen, say
        self.baseline: float | None = None
        self.records: list[dict] = []

    def __call__(self, qmodel) -> float:
        from llmctl.compress.calibration import held_out_perplexity
        from llmctl.models.formats.woq import exact_weights

        if self.baseline is not None:
            exact_weights(qmodel)  # each trial scored on the float32 weights its saved layout loads with
        ppl = held_out_perplexity(qmodel, self.src.loaded.tokenizer, self.src.data.eval_text, self.seqlen)
        if self.baseline is None:
            self.baseline = ppl
            self.say(f"full-precision perplexity {ppl:.3f}")
        else:
            self._record(ppl)
        return 1.0 / ppl

    def _record(self, ppl: float) -> None:
        k = len(self.records)
        cfg = self.configs[k]
        rel = ppl / self.baseline - 1
        self.records.append(
            {
                "trial": k + 1,
                "label": label(cfg),
                "algo": cfg["algo"],
                "bits": cfg["bits"],
                "group_size": cfg["group_size"],
                "sym": cfg["sym"],
                "perplexity": ppl,
                "relative_increase": round(rel, 4),
                "ok": rel <= self.max_loss,
            }
        )
        self.say(f"trial {k + 1}: {label(cfg)} → ppl {ppl:.3f} ({rel:+.2%})")

    def chosen(self) -> dict:
        """The first trial within max_loss, or GateFailed listing every trial."""
        chosen = next((r for r in self.records if r["ok"]), None)
        if chosen is None:
            summary = ", ".join(f"{r['label']} {r['relative_increase']:+.2%}" for r in self.records)
            raise GateFailed(
                f"no configuration within --max-loss {self.max_loss:.2%} after {len(self.records)} trials ({summary})",
                hint="raise --max-loss or --max-trials, or give more calibration data",
            )
        return chosen


def _search(src, trials: Trials, config: dict):
    """neural-compressor's autotune over the trial configs, INC's algorithms patched as llmctl runs them."""
    import torch
    from neural_compressor.torch.quantization import TuningConfig, autotune

    from llmctl.quantize.inc import calibration_forwards, inc_config
    from llmctl.quantize.inc_patches import awq_fixes, gptq_block_inputs_fix, gptq_rtn_grid
    from llmctl.runtime.quiet import stdout_to_stderr

    model, windows = src.loaded.model, src.data.windows
    inc_cfgs = [inc_config(t["algo"], t, model) for t in trials.configs]
    tol = 1 - 1 / (1 + config["max_loss"])
    torch.manual_seed(config["calib"]["seed"])
    with stdout_to_stderr(), gptq_rtn_grid(config["gptq"]["rtn_grid"]), gptq_block_inputs_fix(), awq_fixes():
        return autotune(
            model,
            TuningConfig(config_set=inc_cfgs, tolerable_loss=tol, max_trials=config["max_trials"]),
            eval_fn=trials,
            run_fn=calibration_forwards(windows),
            example_inputs=windows[0],
        )


def _save(reservation, best, src, trials: Trials, final_cfg: dict, resolved_cfg: dict, command: str, seconds):
    """Save the chosen model in INC's weight-only layout and publish it; returns its meta (+ "_format")."""
    from llmctl.paths import dir_size_mb, weights_size_mb
    from llmctl.quantize.inc import save_weight_only

    chosen = trials.chosen()
    with reservation.staging() as tmp:
        fmt, layout = save_weight_only(best, src.loaded.tokenizer, tmp, final_cfg["algo"], final_cfg)
        meta = {
            "algo": final_cfg["algo"],
            "backend": "inc",
            "bits": final_cfg["bits"],
            "group_size": final_cfg["group_size"],
            "sym": final_cfg["sym"],
            **src.data.describe(),
            "quantize_seconds": seconds,
            "size_mb": dir_size_mb(tmp),
            "weights_mb": weights_size_mb(tmp),
            "perplexity_before": trials.baseline,
            "perplexity_after": chosen["perplexity"],
            "max_loss": trials.max_loss,
            "trials": trials.records,
            **layout,
        }
        src.publish(reservation, tmp, fmt, resolved_cfg, command, chosen["perplexity"], meta)
    return {**meta, "_format": fmt}
