"""Check the search block: `search { key = int(10, 100) ... }` -> the search space (specc.language.spec.SearchRange),
each key one that `--set` takes and every end of a range, every choice, a value the spec checks with."""

from __future__ import annotations

from collections.abc import Callable

from specc.language import ast, codes
from specc.language.check.values import Checker, Param, bind_args, shown
from specc.language.diagnostics import Diagnostic
from specc.language.source import Span
from specc.language.spec import SearchRange

BLOCK = "search"
KINDS: dict[str, tuple[Param, ...]] = {
    "int": (Param("low", True), Param("high", True), Param("step")),
    "float": (Param("low", True), Param("high", True)),
    "log": (Param("low", True), Param("high", True)),
    "choice": (Param("values", True, True),),
}
WHAT = "int(low, high[, step]), float(low, high), log(low, high) or choice(v1, v2, ...)"
# check(tree) -> the errors of checking that syntax tree, a spec without its search block (driver's)
Recheck = Callable[[ast.SpecFile], list[Diagnostic]]


def entries(block: ast.Block, c: Checker) -> list[tuple[str, Span, ast.Expr]]:
    """The block's (key, key span, range) lines; any other statement is an error."""
    found = []
    for stmt in block.body:
        if isinstance(stmt, (ast.Assign, ast.KeyAssign)):
            found.append((stmt.target.id, stmt.target.span, stmt.value))
        else:
            c.error(codes.MISPLACED_STATEMENT, "a search block holds `key = range` lines", stmt.span,
                    [f"e.g. train.fit.lr = log(1e-4, 1e-1); a range is {WHAT}"])
    return found


def check_search(c: Checker, block: ast.Block, tree: ast.SpecFile, recheck: Recheck) -> tuple[SearchRange, ...]:
    """The search space of a search block; each mistake an error. `tree`: the spec without its search
    block (with its --set values), on which every key and value is tried as a `--set` would be."""
    clean = not c.errors
    seen: dict[str, Span] = {}
    ranges: list[tuple[SearchRange, ast.Expr]] = []
    for key, key_span, value in entries(block, c):
        if key in seen:
            c.error(codes.DEFINED_TWICE, f"search key '{key}' is given twice", key_span,
                    [f"first given at line {seen[key].line}"])
            continue
        seen[key] = key_span
        found = _range(c, key, key_span, value)
        if found is not None and _known_key(c, found, value, tree):
            ranges.append((found, value))
    if clean and not c.errors:  # only a spec that checks can tell what a value does to it
        for found, value in ranges:
            _try_values(c, found, value, tree, recheck)
    return tuple(r for r, _ in ranges)


def _tried(found: SearchRange, value: ast.Call) -> list[ast.Expr]:
    """The values a range is checked with: its two ends, or every choice."""
    if found.kind == "choice":
        return list(value.args)
    args = bind_args(value, KINDS[found.kind])
    return [args["low"], args["high"]]


def _known_key(c: Checker, found: SearchRange, value: ast.Call, tree: ast.SpecFile) -> bool:
    """Whether `--set key=...` takes the key (an unknown one reported, as --set reports it, at the key)."""
    from specc.language import overrides

    expr = _tried(found, value)[0]
    text = f"{found.key}={expr.span.text}"
    errors = overrides.apply(tree, [text])[1]
    c.errors.extend(_moved(d, text, found, expr) for d in errors)
    return not errors


def _range(c: Checker, key: str, key_span: Span, value: ast.Expr) -> SearchRange | None:
    """One line's range: its kind, its ends (numbers) or its choices (as written)."""
    if not isinstance(value, ast.Call) or value.func.id not in KINDS:
        c.error(codes.WRONG_KIND, f"search '{key}': expected {WHAT}, found {shown(value)}", value.span)
        return None
    kind = value.func.id
    if not c.args_ok(value, KINDS[kind]):
        return None
    args = bind_args(value, KINDS[kind])
    if kind == "choice":
        texts = [v.span.text for v in args["values"]]
        for k, v in enumerate(args["values"]):
            if texts[k] in texts[:k]:
                c.error(codes.DEFINED_TWICE, f"choice: the value {texts[k]} is given twice", v.span)
                return None
        return SearchRange(key, kind, choices=tuple(texts), span=key_span)
    low, high = c.number(args["low"], f"{kind}: low"), c.number(args["high"], f"{kind}: high")
    step = c.number(args["step"], "int: step") if "step" in args else None
    if low is None or high is None or ("step" in args and step is None):
        return None
    if kind == "int":
        for name, number in (("low", low), ("high", high), ("step", step)):
            if number is not None and number != int(number):
                what = "step" if name == "step" else f"{name} end"
                c.error(codes.NOT_WHOLE, f"int: the {what} must be a whole number, found {number:g}",
                        args[name].span, ["float(low, high) searches over real numbers"])
                return None
        if step is not None and step < 1:
            c.error(codes.OUT_OF_RANGE, f"int: the step must be at least 1, found {step:g}", args["step"].span)
            return None
    if kind == "log" and low <= 0:
        c.error(codes.OUT_OF_RANGE, f"log: the low end must be above 0 (a log-uniform range), found {low:g}",
                args["low"].span, ["float(low, high) searches a range from 0 or below, uniformly"])
        return None
    if low >= high:
        c.error(codes.CONFLICT, f"{kind}: the low end ({low:g}) must be below the high end ({high:g})",
                args["low"].span.to(args["high"].span))
        return None
    if kind == "int":
        low, high, step = int(low), int(high), int(step) if step is not None else None
    return SearchRange(key, kind, low=low, high=high, step=step, span=key_span)


def _try_values(c: Checker, found: SearchRange, value: ast.Call, tree: ast.SpecFile, recheck: Recheck) -> None:
    """Apply the key with each end of the range (each choice) as `--set key=value` does, check the spec
    with it, and report what fails at the value in the search block (the key first, once)."""
    from specc.language import overrides

    for expr in _tried(found, value):
        text = f"{found.key}={expr.span.text}"
        changed, errors = overrides.apply(tree, [text])
        moved: dict[tuple, Diagnostic] = {}
        for d in errors or recheck(changed):
            d = _moved(d, text, found, expr)
            # a param used twice fails twice, at the same value: say it once
            moved.setdefault((d.code, d.message, d.span.start, d.span.end), d)
        if moved:
            c.errors.extend(moved.values())
            return  # one value's errors say what is wrong with the key; the next would repeat them


def _moved(d: Diagnostic, text: str, found: SearchRange, expr: ast.Expr) -> Diagnostic:
    """A diagnostic of `--set key=value`, placed on the key or the value in the search block."""
    key_len = len(found.key)
    if d.span is not None and d.span.source.path == "--set" and d.span.source.text == text:
        if d.span.start < key_len:
            span = found.span
            if found.span.text == found.key:  # written without spaces: point at the part of the key
                span = Span(found.span.source, found.span.start + d.span.start,
                            found.span.start + min(d.span.end, key_len))
            return Diagnostic(d.code, d.message, span, d.notes)
        start = expr.span.start + d.span.start - key_len - 1
        span = Span(expr.span.source, start, max(start, expr.span.start + d.span.end - key_len - 1))
        return Diagnostic(d.code, d.message, span, d.notes + (f"the search tries {found.key} = {expr.span.text}",))
    # reported where the value is used in the spec: say so at the value
    where = f"at line {d.span.line}" if d.span is not None else "in the spec"
    return Diagnostic(d.code, f"{found.key} = {expr.span.text}: {d.message}", expr.span,
                      d.notes + (f"reported {where} when the search tries this value",))
