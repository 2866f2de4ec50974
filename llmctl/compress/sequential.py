"""True-sequential calibration of one decoder block at about the cost of one forward of its linears.

Pass k gathers the statistic of input class k (the linears that read one tensor: q/k/v, o, gate/up, down)
from the block's real inputs run through the classes 0..k-1 already compressed; the caller compresses class k
between passes; a last pass computes the block's outputs. Three things keep the passes cheap:
- class k's own linears are stubbed in pass k (they share one input, so none reads another's output) and the
  pass stops once all of them were called;
- a submodule whose output can no longer change (its weights are final and everything it reads was
  computed by final modules: `final_at`, from the traced call order) is computed once and replayed from a
  cache later;
- a module whose output is its last child's output (LLaMA's attention returns (o_proj(...), None), its MLP
  returns down_proj(...)) is replayed as that child applied to the input the child got in the pass that
  recorded it: attention and the MLP's inner products are not recomputed once o / down are compressed.
The caches stay under a byte budget; past it, modules are simply recomputed. A module called twice per
forward, or whose output the block modifies in place, is never cached.

Examples:
    plan = plan_block(block, *captured[0])
    seq = SequentialBlock(block, plan, captured, cache_bytes=2**30)
    for k in range(len(plan.classes)):
        H = seq.gather(k, "hessian"); ...compress plan.classes[k]...
    next_captured = seq.outputs()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llmctl.compress.blocks import (
    STATS,
    _Accumulator,
    _first,
    _Stop,
    _with_hidden,
    block_linears,
    capture_block_inputs,
    decoder_layers,
    gather_dense,
    out_features,
    run_block,
)
from llmctl.errors import LlmctlError
from llmctl.runtime.progress import Progress


@dataclass
class BlockPlan:
    """The call structure of one block, from one traced forward.

    classes: linears grouped by the tensor they read, in call order. final_at: per submodule, the first pass
    in which its output is final. passthrough: parent → the linear whose output the parent returns (as itself
    or as element 0 of a tuple whose other elements are None). cacheable: submodules whose outputs may be
    kept (called once per forward, output not modified in place).
    """

    classes: list[list[str]]
    names: list[str] = field(default_factory=list)
    final_at: dict[str, int] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)
    passthrough: dict[str, str] = field(default_factory=dict)
    tuple_len: dict[str, int] = field(default_factory=dict)  # passthrough parent → its tuple's length (0: tensor)
    cacheable: set[str] = field(default_factory=set)

    def group_of(self, name: str) -> int | None:
        for k, members in enumerate(self.classes):
            if name in members:
                return k
        return None


def _trace(block, args, kwargs) -> dict:
    """One forward of block with hooks on every submodule: call order, inputs and outputs."""
    import torch

    mods = {n: m for n, m in block.named_modules() if n}
    log: dict = {"starts": [], "ends": {}, "calls": {}, "inputs": {}, "outputs": {}, "versions": {}}
    handles = []

    def pre(name):
        def hook(_m, inp):
            log["starts"].append(name)
            log["calls"][name] = log["calls"].get(name, 0) + 1
            log["inputs"][name] = inp[0] if inp else None

        return hook

    def post(name):
        def hook(_m, _inp, out):
            log["ends"][name] = len(log["starts"])
            log["outputs"][name] = out
            log["versions"][name] = [t._version for t in _tensors(out)]

        return hook

    for name, mod in mods.items():
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return log


def _tensors(out) -> list:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return [out] if hasattr(out, "_version") else []


def plan_block(block, args, kwargs) -> BlockPlan:
    """Trace one forward of block: input classes, when each submodule's output is final, what may be replayed."""
    linears = block_linears(block)
    log = _trace(block, args, kwargs)
    classes: list[list[str]] = []
    for name in log["starts"]:
        if name in linears and log["calls"][name] == 1 and not any(name in c for c in classes):
            x = log["inputs"][name]
            for members in classes:
                if log["inputs"][members[0]] is x:
                    members.append(name)
                    break
            else:
                classes.append([name])
    missing = [n for n in linears if n not in log["calls"]]
    if missing or any(log["calls"][n] != 1 for n in linears):
        raise LlmctlError(
            f"the linear {(missing or [n for n in linears if log['calls'][n] != 1])[0]} is not called "
            "exactly once per forward of its decoder block",
            hint="this architecture is not supported by true-sequential calibration",
        )
    plan = BlockPlan(classes=classes, names=[n for n, _ in block.named_modules()])
    group = {n: k for k, members in enumerate(classes) for n in members}
    begin: dict[str, int] = {}
    for i, name in enumerate(log["starts"]):
        begin.setdefault(name, i)
    for name in sorted(log["calls"], key=lambda n: begin[n]):
        own = max((group[n] + 1 for n in linears if n == name or n.startswith(name + ".")), default=0)
        before = [plan.final_at[o] for o in plan.final_at if log["ends"].get(o, len(log["starts"])) <= begin[name]]
        plan.final_at[name] = max([own] + before)
        plan.parent[name] = name.rsplit(".", 1)[0] if "." in name else ""
        outs = _tensors(log["outputs"].get(name))
        if log["calls"][name] == 1 and outs and [t._version for t in outs] == log["versions"][name]:
            plan.cacheable.add(name)
    for name in plan.final_at:
        children = [c for c in log["starts"] if plan.parent.get(c) == name]
        out = log["outputs"].get(name)
        if not children or children[-1] not in linears or name not in plan.cacheable:
            continue
        head, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if head is log["outputs"][children[-1]] and all(r is None for r in rest):
            plan.passthrough[name] = children[-1]
            plan.tuple_len[name] = len(out) if isinstance(out, tuple) else 0
    return plan


def _nbytes(out) -> int:
    return sum(t.nbytes for t in _tensors(out))


class SequentialBlock:
    """True-sequential passes over one block; see the module docstring."""

    def __init__(self, block, plan: BlockPlan, captured: list, cache_bytes: int):
        self.block, self.plan, self.captured = block, plan, captured
        self.mods = {n: m for n, m in block.named_modules() if n in plan.final_at}
        self.cache: dict[str, list] = {}  # module → output per window
        self.recorded: dict[str, list] = {}  # passthrough linear → its input per window
        self.cache_bytes, self.used, self.window = cache_bytes, 0, 0
        last = len(plan.classes)
        # the pass from which a module is served without running: replayed, or cached at final_at
        self.served_from = {n: plan.group_of(c) + 1 for n, c in plan.passthrough.items()}
        for n in plan.final_at:
            if n in plan.cacheable:
                self.served_from[n] = min(self.served_from.get(n, last + 1), plan.final_at[n] + 1)
        self.served_from[""] = last + 1

    def gather(self, k: int, stat: str):
        """Class k's statistic over every window, its input computed with classes < k compressed."""
        acc = _Accumulator(stat)
        self._pass(k, acc)
        return acc.value

    def outputs(self) -> list:
        """The block's outputs with every class compressed, as the next block's captured inputs."""
        outs = self._pass(len(self.plan.classes), None)
        self.cache.clear()
        self.recorded.clear()
        return [_with_hidden(args, kwargs, out) for (args, kwargs), out in zip(self.captured, outs)]

    def _pass(self, p: int, acc) -> list:
        import torch

        members = self.plan.classes[p] if acc is not None else []
        # the pass stops after the last member, or after its parent when that parent will be replayed
        stopper = next(
            (par for par, child in self.plan.passthrough.items() if members and child == members[-1]),
            members[-1] if members else None,
        )
        state: dict = {}
        saved = {name: mod.__dict__.get("forward") for name, mod in self.mods.items()}
        for name, mod in self.mods.items():
            mod.forward = self._wrapper(name, mod, p, members, stopper, acc, state)
        outs = []
        try:
            with torch.no_grad():
                for w, (args, kwargs) in enumerate(self.captured):
                    self.window, state["seen"] = w, 0
                    try:
                        outs.append(_first(self.block(*args, **kwargs)))
                    except _Stop:
                        pass
        finally:
            for name, mod in self.mods.items():
                if saved[name] is None:
                    del mod.forward
                else:
                    mod.forward = saved[name]
        self._drop(p)
        return outs

    def _fits(self, out) -> bool:
        if self.used + _nbytes(out) > self.cache_bytes:
            return False
        self.used += _nbytes(out)
        return True

    def _wrapper(self, name, mod, p, members, stopper, acc, state):
        import torch

        original, plan, windows, last = mod.forward, self.plan, len(self.captured), len(self.plan.classes)
        store = (
            name in plan.cacheable
            and plan.final_at[name] == p < last
            and self.served_from.get(plan.parent[name], last + 1) > p + 1
        )
        child = plan.passthrough.get(name)
        replay = child is not None and plan.group_of(child) < p
        record = name in members and name in plan.passthrough.values()

        def forward(*args, **kwargs):
            w = self.window
            if name in members:  # class p: record its input; its output is never used before the pass stops
                x = args[0] if args else next(iter(kwargs.values()))
                if state["seen"] == 0:
                    acc.add(x)
                if record and self._fits(x):
                    self.recorded.setdefault(name, [None] * windows)[w] = x
                state["seen"] += 1
                if name == stopper:
                    raise _Stop
                return torch.zeros(*x.shape[:-1], out_features(mod), dtype=x.dtype)
            cached = self.cache.get(name)
            if cached is not None and cached[w] is not None:
                return cached[w]
            inputs = self.recorded.get(child) if replay else None
            if inputs is not None and inputs[w] is not None:  # this module returns child(x): replay only that
                head = self.mods[child](inputs[w])
                out = (head,) + (None,) * (plan.tuple_len[name] - 1) if plan.tuple_len[name] else head
            else:
                out = original(*args, **kwargs)
            if name == stopper:
                raise _Stop
            if store and self._fits(out):
                self.cache.setdefault(name, [None] * windows)[w] = out
            return out

        return forward

    def _drop(self, p: int) -> None:
        """Free what no later pass reads: caches under a served parent, inputs of replayed modules now cached."""
        last = len(self.plan.classes)
        for name in list(self.cache):
            if self.served_from.get(self.plan.parent[name], last + 1) <= p + 1:
                self.used -= _nbytes(self.cache.pop(name))
        for parent, child in self.plan.passthrough.items():
            done = self.cache.get(parent)
            if child in self.recorded and done is not None and all(o is not None for o in done):
                self.used -= _nbytes(self.recorded.pop(child))


def walk_blocks(
    model,
    windows,
    on_class: Callable,
    *,
    sequential: bool,
    stat: str,
    progress: Progress | None = None,
    label: str = "calibrating",
    cache_mb: int = 1024,
) -> None:
    """Calibrate and compress a model block by block; on_class(block_index, block, names, stat) compresses one class.

    names are the linears (relative to the block) that read the same input, stat is that input's Σ xᵀx
    ("hessian", float32 [cols, cols]) or Σ x² ("sqsum", [cols]) over every calibration token. With
    sequential=True the statistic is taken after the block's earlier classes were compressed (GPTQ's
    true-sequential); else every class sees the block's dense forward (SparseGPT's and Wanda's reference).

    Examples:
        walk_blocks(model, windows, lambda i, b, names, H: ..., sequential=True, stat="hessian")
    """
    from llmctl.compress.obs import single_thread
    from llmctl.compress.progress import BlockETA

    if stat not in STATS:
        raise LlmctlError(f"unknown statistic {stat!r}", hint=f"use one of {', '.join(STATS)}")
    layers = decoder_layers(model)
    captured = capture_block_inputs(model, windows)
    eta = BlockETA(progress, label, len(layers))
    plan = None
    for i, block in enumerate(layers):
        eta.start(i)
        if plan is None or plan.names != [n for n, _ in block.named_modules()]:
            plan = plan_block(block, *captured[0])
        if sequential:
            seq = SequentialBlock(block, plan, captured, cache_mb * 2**20)
            for k, members in enumerate(plan.classes):
                value = seq.gather(k, stat)
                with single_thread():
                    on_class(i, block, members, value)
            captured = seq.outputs()
        else:
            for members, value in zip(plan.classes, gather_dense(block, captured, plan, stat)):
                with single_thread():
                    on_class(i, block, members, value)
            captured = run_block(block, captured)
    eta.done()
