"""The model summary `specc check` prints: values, shapes, parameters, groups (no torch)."""

from __future__ import annotations

from specc.expand import expand
from specc.params import show_value
from specc.plan import describe, make_plan, model_sizes, module_params, resolve
from specc.spec import (
    Activation, MissingIndicator, Tabular, BatchNorm, Binary, Concat, Dot, Dropout, Embedding, Flatten, Input, Linear,
    SigmoidRange, Spec,
)


def _describe(node) -> str:
    op, args = node.op, ", ".join(node.inputs)
    if isinstance(op, Input):
        steps = [f"* {op.scale:.6g}"] if op.scale is not None else []
        steps += ["missing -> median"] if op.fill else []
        steps += ["normalized"] if op.normalize else []
        return f"input column {op.column}" + (f" ({', '.join(steps)})" if steps else "")
    if isinstance(op, MissingIndicator):
        return f"is {op.column} missing? (1 no, 2 yes)"
    if isinstance(op, Tabular):
        return f"tabular({len(op.cats)} cats, {len(op.conts)} conts, layers {list(op.layers)})"
    if isinstance(op, Embedding):
        return f"embedding({op.column}, {op.dim})"
    if isinstance(op, Binary):
        if op.constant is None:
            return f" {op.op} ".join(node.inputs)
        parts = [f"{op.constant:g}", node.inputs[0]] if op.constant_first else [node.inputs[0], f"{op.constant:g}"]
        return f" {op.op} ".join(parts)
    if isinstance(op, SigmoidRange):
        return f"sigmoid_range({args}, {op.low:g}, {op.high:g})"
    if isinstance(op, Linear):
        return f"linear({args}, {op.out})"
    if isinstance(op, Dropout):
        return f"dropout({args}, {op.p:g})"
    if isinstance(op, Activation):
        return f"{op.kind}({args})"
    name = {Dot: "dot", BatchNorm: "batchnorm", Flatten: "flatten", Concat: "concat"}[type(op)]
    if len(node.inputs) > 4:
        args = f"{', '.join(node.inputs[:3])}, ... {len(node.inputs)} values"
    return f"{name}({args})"


def summary(spec: Spec, read_data: bool = True) -> str:
    """Layers with output shapes and parameter counts; with the data read, vocabulary sizes and the plan."""
    lines = [f"spec {spec.name}: ok"]
    if spec.params:
        lines.append("params: " + ", ".join(f"{p.name} = {show_value(p.value)}" + (" (--set)" if p.overridden else "")
                                            for p in spec.params))
    sizes, prepared = None, None
    if read_data:
        from specc.data.prepare import prepare

        prepared = prepare(spec.data, spec.model.inputs)
        sizes = model_sizes(spec, prepared)
        cats = [f"{c} {v.size - 1} (+1 unknown)" for c, v in prepared.vocabs.items() if v.unknown]
        target = prepared.vocabs.get(spec.data.target.name)
        if target is not None:
            shown = ", ".join(target.values[:12]) + (", ..." if len(target.values) > 12 else "")
            cats.append(f"target {spec.data.target.name}: {target.size} classes ({shown})")
        lines.append(f"data: {prepared.path}: {prepared.n_train} training + {prepared.n_valid} validation rows"
                     f"{'; ' + '; '.join(cats) if cats else ''}")
        plan = make_plan(spec, prepared)  # also checks the output against the number of classes
        counts = module_params(spec, sizes)
    rows = [("value", "computes", "shape", "params")]
    # with the data read, blocks such as tabular(...) are shown expanded into their primitives
    nodes = expand(spec.model, sizes).nodes if sizes is not None else spec.model.nodes
    for node in nodes:
        params = "-"
        if sizes is not None and node.name in counts:
            params = f"{counts[node.name]:,}"
        elif isinstance(node.op, Embedding):
            params = f"(n_{node.op.column} + 1) x {node.op.dim}"
        dims = [str(resolve(d, sizes)) if sizes else str(d) for d in node.shape]
        rows.append((node.name + (" (output)" if node.name == spec.model.output else ""), _describe(node),
                     f"(batch, {', '.join(dims)})" if dims else "(batch) index", params))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        lines.append("  " + "  ".join(cell.ljust(w) if k < 3 else cell.rjust(w)
                                      for k, (cell, w) in enumerate(zip(r, widths))).rstrip())
    if prepared is not None:
        groups = ", ".join(f"{g.name} ({g.params:,})" for g in plan.groups)
        lines.append(f"  total parameters: {sum(counts.values()):,}; layer groups: {groups}")
        lines.append(describe(spec, plan))
    return "\n".join(lines)



