"""The model summary `specc check` prints: values, widths, parameters, groups (no torch)."""

from __future__ import annotations

from specc.spec import Binary, Dot, Embedding, Input, SigmoidRange, Spec


def _describe(node) -> str:
    op = node.op
    if isinstance(op, Input):
        return f"input column {op.column}"
    if isinstance(op, Embedding):
        return f"embedding({op.column}, {op.dim})"
    if isinstance(op, Dot):
        return f"dot({', '.join(node.inputs)})"
    if isinstance(op, Binary):
        if op.constant is None:
            return f" {op.op} ".join(node.inputs)
        parts = [f"{op.constant:g}", node.inputs[0]] if op.constant_first else [node.inputs[0], f"{op.constant:g}"]
        return f" {op.op} ".join(parts)
    if isinstance(op, SigmoidRange):
        return f"sigmoid_range({node.inputs[0]}, {op.low:g}, {op.high:g})"
    return type(op).__name__


def summary(spec: Spec, read_data: bool = True) -> str:
    """Layers with output shapes and parameter counts; with the data read, vocabulary sizes and the plan."""
    sizes = None
    lines = [f"spec {spec.name}: ok"]
    if read_data:
        from specc.data.prepare import prepare
        from specc.plan import describe, make_plan

        prepared = prepare(spec.data, spec.model.inputs)
        sizes = {c: v.size for c, v in prepared.vocabs.items()}
        cats = ", ".join(f"{c} {n - 1} (+1 unknown)" for c, n in sizes.items())
        lines.append(f"data: {prepared.path}: {prepared.n_train + prepared.n_valid} rows; categories: {cats or '-'}")
    rows = [("value", "computes", "shape", "params")]
    total = 0
    for node in spec.model.nodes:
        params = "-"
        if isinstance(node.op, Embedding):
            if sizes is not None:
                count = sizes[node.op.column] * node.op.dim
                total += count
                params = f"{count:,}"
            else:
                params = f"(n_{node.op.column} + 1) x {node.op.dim}"
        rows.append((node.name + (" (output)" if node.name == spec.model.output else ""), _describe(node),
                     f"(batch, {node.width})", params))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        lines.append("  " + "  ".join(cell.ljust(w) if k < 3 else cell.rjust(w)
                                      for k, (cell, w) in enumerate(zip(r, widths))).rstrip())
    if sizes is not None:
        lines.append(f"  total parameters: {total:,}; groups: model (all)")
        plan = make_plan(spec, sizes, prepared.n_train, prepared.n_valid)
        lines.append(describe(spec, plan))
    return "\n".join(lines)
