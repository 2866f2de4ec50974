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
from collections.abc import Callable

from llmctl.errors import GateFailed, LlmctlError

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


def tune(
    model: str, reservation, config: dict, command: str = "", progress: Callable[[str], None] | None = None
) -> dict:
    """Run the accuracy-aware search, register the first configuration within max_loss, report every trial."""
    import torch

    from llmctl.compress.calibration import held_out_perplexity, prepare_data
    from llmctl.config.profiles import save_config
    from llmctl.models.formats.woq import exact_weights
    from llmctl.models.loading import load_full_precision
    from llmctl.models.registry import ModelEntry
    from llmctl.paths import dir_size_mb, weights_size_mb
    from llmctl.quantize.inc import calibration_forwards, inc_config, save_weight_only
    from llmctl.quantize.inc_patches import awq_fixes, gptq_block_inputs_fix, gptq_rtn_grid
    from llmctl.quantize.support import check_linear_layers
    from llmctl.runtime.quiet import stdout_to_stderr

    say = progress or (lambda _m: None)
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
    max_loss, max_trials = config["max_loss"], config["max_trials"]
    loaded = load_full_precision(model, "quantize")
    if config["save_format"] == "compressed-tensors":
        check_linear_layers(loaded.model)
    tok = loaded.tokenizer
    c, ev = config["calib"], config["eval"]
    if not c["data"]:
        raise LlmctlError(
            "accuracy-aware mode needs calibration data (its tail is the held-out text)",
            hint="pass --calib-data FILE (and optionally --eval-data FILE)",
        )
    if not ev["tokens"]:
        raise LlmctlError("accuracy-aware mode needs held-out perplexity", hint="use --eval-tokens > 0")
    data = prepare_data(tok, c["data"], c["samples"], c["seqlen"], c["seed"], ev["data"], ev["tokens"], need_calib=True)
    trials_cfg = candidates(config)[:max_trials]
    records: list[dict] = []
    state = {"baseline": None}

    def eval_fn(qmodel) -> float:
        if state["baseline"] is not None:
            exact_weights(qmodel)  # each trial scored on the float32 weights its saved layout loads with
        ppl = held_out_perplexity(qmodel, tok, data.eval_text, ev["seqlen"])
        if state["baseline"] is None:
            state["baseline"] = ppl
            say(f"full-precision perplexity {ppl:.3f}")
        else:
            k = len(records)
            cfg = trials_cfg[k]
            rel = ppl / state["baseline"] - 1
            records.append(
                {
                    "trial": k + 1,
                    "label": label(cfg),
                    "algo": cfg["algo"],
                    "bits": cfg["bits"],
                    "group_size": cfg["group_size"],
                    "sym": cfg["sym"],
                    "perplexity": ppl,
                    "relative_increase": round(rel, 4),
                    "ok": rel <= max_loss,
                }
            )
            say(f"trial {k + 1}: {label(cfg)} → ppl {ppl:.3f} ({rel:+.2%})")
        return 1.0 / ppl

    from neural_compressor.torch.quantization import TuningConfig, autotune

    inc_cfgs = [inc_config(t["algo"], t, loaded.model) for t in trials_cfg]
    tol = 1 - 1 / (1 + max_loss)
    started = time.perf_counter()
    torch.manual_seed(c["seed"])
    with stdout_to_stderr(), gptq_rtn_grid(config["gptq"]["rtn_grid"]), gptq_block_inputs_fix(), awq_fixes():
        best = autotune(
            loaded.model,
            TuningConfig(config_set=inc_cfgs, tolerable_loss=tol, max_trials=max_trials),
            eval_fn=eval_fn,
            run_fn=calibration_forwards(data.windows),
            example_inputs=data.windows[0],
        )
    seconds = round(time.perf_counter() - started, 1)
    chosen = next((r for r in records if r["ok"]), None)
    if chosen is None:
        summary = ", ".join(f"{r['label']} {r['relative_increase']:+.2%}" for r in records)
        raise GateFailed(
            f"no configuration within --max-loss {max_loss:.2%} after {len(records)} trials ({summary})",
            hint="raise --max-loss or --max-trials, or give more calibration data",
        )
    final_cfg = trials_cfg[chosen["trial"] - 1]
    parent = loaded.resolved.name
    name = reservation.name
    with reservation.staging() as tmp:
        fmt, layout = save_weight_only(best, tok, tmp, final_cfg["algo"], final_cfg)
        resolved_cfg = {**final_cfg, "max_loss": max_loss, "max_trials": max_trials}
        save_config(resolved_cfg, tmp / "llmctl-config.yaml", command)
        meta = {
            "algo": final_cfg["algo"],
            "backend": "inc",
            "bits": final_cfg["bits"],
            "group_size": final_cfg["group_size"],
            "sym": final_cfg["sym"],
            **data.describe(),
            "quantize_seconds": seconds,
            "size_mb": dir_size_mb(tmp),
            "weights_mb": weights_size_mb(tmp),
            "perplexity_before": state["baseline"],
            "perplexity_after": chosen["perplexity"],
            "max_loss": max_loss,
            "trials": records,
            **layout,
        }
        reservation.publish(
            ModelEntry(
                name=name,
                format=fmt,
                path="",
                parents=[parent] if parent else [],
                command=command,
                profile=resolved_cfg,
                metrics={"heldout.perplexity": chosen["perplexity"]},
                meta=meta,
            ),
            tmp,
        )
    return {
        "name": name,
        "format": fmt,
        "parent": parent,
        "path": str(reservation.path),
        "relative_ppl_increase": chosen["relative_increase"],
        **meta,
    }
