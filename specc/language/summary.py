"""The model summary and the plan as text, as `specc check` and `specc show` print them (no torch)."""

from __future__ import annotations

from specc.data.splits import validates, validation_rows
from specc.language.diagnostics import printable
from specc.language.params import show_value
from specc.language.spec import Fit, FitOneCycle, LRFind, LRSlice, Spec
from specc.model import ops
from specc.model.plan import TrainPlan, make_plan
from specc.model.sized import model_sizes, size_model
from specc.training import optimizers


def summary(spec: Spec, read_data: bool = True) -> str:
    """Layers with output shapes and parameter counts; with the data read, vocabulary sizes and the plan."""
    lines = [f"spec {spec.name}: ok"]
    if spec.params:
        lines.append("params: " + ", ".join(f"{p.name} = {show_value(p.value)}" + (" (--set)" if p.overridden else "")
                                            for p in spec.params))
    if spec.search:  # what `specc tune` tries; check and train use the values above
        lines.append("search: " + ", ".join(f"{r.key} = {r.text()}" for r in spec.search))
    if not read_data:
        return "\n".join(lines + _table(spec, spec.model.nodes, None))
    from specc.data.prepare import prepare

    prepared = prepare(spec.data, spec.model.inputs)
    cats = [f"{c} {v.size - 1} (+1 unknown)" for c, v in prepared.vocabs.items() if v.unknown]
    target = prepared.vocabs.get(spec.data.target.name)
    if target is not None:
        # a class name may hold a line break or a byte that is not UTF-8: escaped, so the summary keeps its lines
        shown = ", ".join(printable(str(v)) for v in target.values[:12]) + \
            (", ..." if len(target.values) > 12 else "")
        cats.append(f"target {spec.data.target.name}: {target.size} classes ({shown})")
    train = f"{prepared.n_train} training rows" if prepared.pairs is None else \
        f"{prepared.n_train} training users ({len(next(iter(prepared.pairs.values())))} interactions)"
    rows = f"{train} + {prepared.n_valid} validation rows" if validates(spec.data.valid) else \
        f"{train}, {validation_rows(spec.data.valid, 0)}"
    lines.append(f"data: {printable(str(prepared.path))}: {rows}{'; ' + '; '.join(cats) if cats else ''}")
    plan = make_plan(spec, prepared)  # also checks the output against the number of classes
    # with the data read, blocks such as tabular(...) are shown expanded into their primitives
    model = size_model(spec.model, model_sizes(spec, prepared))
    counts = model.params()
    lines += _table(spec, model.nodes, counts)
    groups = ", ".join(f"{g.name} ({g.params:,})" for g in plan.groups)
    lines.append(f"  total parameters: {sum(counts.values()):,}; layer groups: {groups}")
    lines.append(describe(spec, plan))
    return "\n".join(lines)


def _table(spec: Spec, nodes, counts: dict[str, int] | None) -> list[str]:
    """value, what it computes, its shape and its parameters (`counts` None: before the data)."""
    rows = [("value", "computes", "shape", "params")]
    for node in nodes:
        params = "-"
        if counts is not None and node.name in counts:
            params = f"{counts[node.name]:,}"
        elif counts is None and ops.get(node.op.name).unsized_params:
            params = ops.get(node.op.name).unsized_params(node.op)
        dims = [str(d) for d in node.shape]
        rows.append((node.name + (" (output)" if node.name == spec.model.output else ""),
                     ops.get(node.op.name).text(node), f"(batch, {', '.join(dims)})" if dims else "(batch) index",
                     params))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    return ["  " + "  ".join(cell.ljust(w) if k < 3 else cell.rjust(w)
                             for k, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def _lr_text(lr) -> str:
    if isinstance(lr, LRFind):
        return "found by lr-find before the stage"
    if isinstance(lr, LRSlice):
        return f"slice({lr.high:g}, div={lr.div:g})" if lr.low is None else f"slice({lr.low:g}, {lr.high:g})"
    return f"{lr:g}"


def describe_schedule(fit, total_steps: int) -> list[str]:
    if isinstance(fit, Fit):
        return [f"fit: constant lr {_lr_text(fit.lr)} for {fit.epochs} epochs ({total_steps} steps)"]
    assert isinstance(fit, FitOneCycle)
    warm = int(fit.pct_start * total_steps)
    return [
        f"fit_one_cycle: {fit.epochs} epochs, {total_steps} steps (torch OneCycleLR, cosine), peak lr "
        f"{_lr_text(fit.lr)}",
        f"  lr   peak / {fit.div:g} -> peak over the first {warm} steps ({fit.pct_start:.0%}),"
        f" then -> peak / {fit.div * fit.final_div:g}",
        f"  momentum {fit.moms[0]:g} -> {fit.moms[1]:g} -> {fit.moms[2]:g} (Adam's beta1 / SGD's momentum)",
    ]


def _fastai_defaults_note(spec: Spec, plan: TrainPlan) -> list[str]:
    """Which of fastai 1's defaults that fastai 2 changed this plan trains with, and how to get
    fastai 2's instead: a reader of the seed (fastai 1's era) may expect either."""
    cycles = [s.fit for s in plan.stages if isinstance(s.fit, FitOneCycle)]
    changed = _fastai2_arguments(spec.train.optimizer)
    used, fastai2 = [], []
    if any(f.pct_start == 0.3 for f in cycles):
        used.append("pct_start=0.3")
        fastai2.append("pct_start=0.25")
    # fastai 2's div_final divides the peak; torch's final_div_factor (specc's final_div) divides
    # the starting lr, peak / div: fastai 2's end is final_div = 1e5 / div.
    late = [f for f in cycles if f.final_div == 1e4 and f.div * f.final_div != 1e5]
    if late:
        divs = {f.div for f in late}
        div = divs.pop() if len(divs) == 1 else None
        used.append(f"final_div=1e4 (the lr ends at peak / {f'{div * 1e4:g}' if div else '(div * 1e4)'})")
        fastai2.append(f"final_div={f'{1e5 / div:g}' if div else '1e5/div'}")
    opt = spec.train.optimizer
    used += [f"{opt.kind} {name}={optimizers.written(getattr(opt, name))}" for name, _ in changed]
    if not used:
        return []
    how = [f"fit_one_cycle(..., {', '.join(fastai2)}){' (the lr ends at peak / 1e5)' if late else ''}"] if fastai2 else []
    if changed:
        how.append(f"{opt.kind}({', '.join(f'{name}={optimizers.written(value)}' for name, value in changed)})")
    return [f"defaults: fastai 1's, the seed's (torch's OneCycleLR and AdamW have the same): {', '.join(used)}",
            f"  for fastai 2's, write {' and '.join(how)}"]


def _fastai2_arguments(opt) -> list[tuple[str, object]]:
    """The optimizer's arguments left at a default that fastai 2 changed, with fastai 2's value."""
    defaults = optimizers.get(opt.kind).defaults()
    return [(name, value) for name, value in optimizers.get(opt.kind).fastai2 if getattr(opt, name) == defaults[name]]


def describe(spec: Spec, plan: TrainPlan) -> str:
    """The plan as text: data, loss, optimizer, groups, each stage's learning rates and schedule."""
    lines = [
        f"data: {plan.n_train} training {'users' if spec.data.per_user else 'rows'}, "
        f"{validation_rows(spec.data.valid, plan.n_valid)}, batch {plan.batch}"
        f" -> {plan.steps_per_epoch} steps per epoch",
        f"loss: {spec.train.loss}{f' + {spec.train.l2:g} * sum(w^2)' if spec.train.l2 else ''}   "
        f"metrics: {', '.join(spec.train.metrics) or '-'}   seed: {spec.train.seed}",
        f"optimizer: {optimizers.get(spec.train.optimizer.kind).describe(spec.train.optimizer)}",
        *(["precision: bf16 (the forward pass under bfloat16 autocast; weights, loss and validation in float32)"]
          if spec.train.precision == "bf16" else []),
        "parameter groups:",
    ]
    for g in plan.groups:
        shown = ", ".join(g.modules[:6]) + (f", ... {len(g.modules)} modules" if len(g.modules) > 6 else "")
        lines.append(f"  {g.name:<8} {g.params:>10,} params  ({shown})")
    for stage in plan.stages:
        trainable = sum(g.params for g, lr in zip(plan.groups, stage.lrs) if lr is not None)
        frozen = sum(g.params for g, lr in zip(plan.groups, stage.lrs) if lr is None)
        lines.append(f"stage {stage.name}: {trainable:,} trainable, {frozen:,} frozen parameters")
        for g, lr in zip(plan.groups, stage.lrs):
            shown = "frozen" if lr is None else ("lr-find" if lr != lr else f"lr {lr:.4g}")
            lines.append(f"  {g.name:<8} {shown}")
        lines.extend("  " + line for line in describe_schedule(stage.fit, plan.steps_per_epoch * stage.epochs))
        if stage.early_stop is not None:
            es = stage.early_stop
            lines.append(f"  early stop: {es.monitor}, patience {es.patience}"
                         f"{', keeping the best epoch' if es.keep_best else ''}")
    lines.extend(_fastai_defaults_note(spec, plan))
    return "\n".join(lines)
