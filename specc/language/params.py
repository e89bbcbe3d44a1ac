"""Named values: the `params { name = value }` block -> its values substituted into the other
blocks before they are checked, so that one number (the seed's n_factors) can size several layers
and be varied with `--set factors=80` or `specc sweep --grid factors=10,40,80`."""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field

from specc.language import ast, codes
from specc.language.diagnostics import Diagnostic, suggest
from specc.language.parse import too_deep
from specc.language.source import Span

BLOCK = "params"
TOO_LARGE = "numbers go up to about 1.8e308"
WHAT_A_PARAM_IS = ("a param is a constant: a number, a string, true or false, a tuple or list of them, "
                   "or a call of them such as slice(1e-4, 1e-3)")


class Written(str):
    """A param value that is not a plain constant (a call such as slice(1e-4, 1e-3)), as written."""


@dataclass(frozen=True, slots=True)
class NamedValue:
    """One param as the spec (or a `--set`) gives it, with its value once folded."""

    name: str
    value: object  # int, float, str, bool, a tuple of them, or Written
    overridden: bool  # given by --set


@dataclass
class Resolved:
    """What resolving the params block gives `check`."""

    blocks: dict[str, ast.Block]
    values: tuple[NamedValue, ...] = ()
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    # where a param was used: (source path, start, end) -> (its name, the note an error there gets)
    uses: dict[tuple[str, int, int], tuple[str, str]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # params reported at their definition


def resolve(blocks: dict[str, ast.Block], reserved: frozenset[str], spec_source) -> Resolved:
    """Check the params block and substitute its values wherever the other blocks name them."""
    block = blocks.get(BLOCK)
    others = {k: b for k, b in blocks.items() if k != BLOCK}
    result = Resolved(others)
    if block is None:
        return result
    taken = declared_names(others)
    exprs: dict[str, ast.Expr] = {}
    defs: dict[str, ast.Assign] = {}
    later = {s.target.id: s.target.span.line for s in block.body if isinstance(s, ast.Assign)}
    deep: set[str] = set()  # params nested too deeply
    for stmt in block.body:
        if not isinstance(stmt, ast.Assign):
            result.errors.append(Diagnostic(codes.MISPLACED_STATEMENT, "a params block holds `name = value` lines",
                                            stmt.span, ("e.g. factors = 40",)))
            continue
        name = stmt.target.id
        if name in defs:
            result.errors.append(Diagnostic(codes.DEFINED_TWICE, f"param '{name}' is defined twice", stmt.target.span,
                                            (f"first defined at line {defs[name].target.span.line}",)))
            continue
        defs[name] = stmt
        if name in reserved:
            result.errors.append(Diagnostic(codes.DEFINED_TWICE, f"'{name}' is a word of the language; give the param "
                                            "another name", stmt.target.span))
            continue
        if name in taken:
            result.errors.append(Diagnostic(codes.DEFINED_TWICE, f"'{name}' is both a param and {taken[name]}",
                                            stmt.target.span, ("give the param another name",)))
            continue
        exprs[name] = _param_value(stmt, exprs, later, result, deep)
    folded = {name: _fold(expr) for name, expr in exprs.items()}
    notes = {name: _note(name, folded[name], defs[name], spec_source) for name in exprs}
    used: set[str] = set()
    result.blocks = {k: _substitute(b, exprs, notes, used, result.uses) for k, b in others.items()}
    values = []
    for name in exprs:
        stmt = defs[name]
        values.append(NamedValue(name, folded[name], stmt.value.span.source is not spec_source))
        if name not in used:
            result.warnings.append(Diagnostic(codes.UNUSED_PARAM, f"param '{name}' is not used", stmt.target.span,
                                              severity="warning"))
    result.values = tuple(values)
    return result


def _param_value(stmt: ast.Assign, exprs: dict[str, ast.Expr], later: dict[str, int], result: Resolved,
                 deep: set[str]) -> ast.Expr:
    """A param's value with the params above it put in, its errors reported; one nested too deeply
    (E306: params built of params could nest without end) stands as 0, its uses not reported again."""
    name, before = stmt.target.id, len(result.errors)
    if any(isinstance(n, ast.Name) and n.id in deep for n, _ in ast.walk(stmt.value)):
        value = None  # built of a param already reported as too deep: not reported again
    else:
        value = _constant(stmt.value, exprs, later, result.errors)
        levels = ast.nesting(dataclasses.replace(stmt, value=value))
        if levels > ast.MAX_DEPTH:
            result.errors.append(too_deep(stmt, levels, " once the params it names are put in"))
            value = None
        elif len(result.errors) == before:
            fold_number(value, "", result.errors)
    if value is None:
        deep.add(name)
    if value is None or len(result.errors) != before:
        result.failed.add(name)
    return ast.Number(0, "0", stmt.value.span) if value is None else value


def declared_names(blocks: dict[str, ast.Block]) -> dict[str, str]:
    """Names the other blocks declare (columns, model values), which a param may not take."""
    names: dict[str, str] = {}
    data = blocks.get("data")
    if data is not None:
        for node, _ in ast.walk(data):
            if isinstance(node, ast.Typed):
                names.setdefault(node.name.id, "a column")
                names.setdefault(f"{node.name.id}_na", "a column (its missing-value indicator)")
            elif isinstance(node, ast.Keyword) and node.name.id == "columns" and \
                    isinstance(node.value, ast.ListExpr):
                for item in node.value.items:
                    if isinstance(item, ast.Name):
                        names.setdefault(item.id, "a column")
    model = blocks.get("model")
    if model is not None:
        for stmt in model.body:
            inner = stmt.body if isinstance(stmt, ast.Section) else (stmt,)
            for s in inner:
                if isinstance(s, ast.Assign):
                    names.setdefault(s.target.id, "a model value")
    return names


def _constant(expr: ast.Expr, known: dict[str, ast.Expr], later: dict[str, int], errors: list) -> ast.Expr:
    """A param's value with earlier params substituted; reports what a constant may not hold."""
    if isinstance(expr, (ast.Number, ast.String)):
        return expr
    if isinstance(expr, ast.Name):
        if expr.id in ("true", "false"):
            return expr
        if expr.id in known:
            return _respan(known[expr.id], expr.span)
        if expr.id in later:
            errors.append(Diagnostic(codes.UNKNOWN_NAME, f"param '{expr.id}' is used before it is defined (at "
                                     f"line {later[expr.id]})", expr.span,
                                     ("define params before the lines that use them",)))
        else:
            errors.append(Diagnostic(codes.UNKNOWN_NAME, f"unknown name '{expr.id}' in a param", expr.span,
                                     suggest(expr.id, known) or (WHAT_A_PARAM_IS,)))
        return expr
    if isinstance(expr, ast.Neg):
        return dataclasses.replace(expr, operand=_constant(expr.operand, known, later, errors))
    if isinstance(expr, ast.BinOp):
        return dataclasses.replace(expr, left=_constant(expr.left, known, later, errors),
                                   right=_constant(expr.right, known, later, errors))
    if isinstance(expr, (ast.TupleExpr, ast.ListExpr)):
        return dataclasses.replace(expr, items=tuple(_constant(i, known, later, errors) for i in expr.items))
    if isinstance(expr, ast.Call):
        return dataclasses.replace(
            expr, args=tuple(_constant(a, known, later, errors) for a in expr.args),
            keywords=tuple(dataclasses.replace(k, value=_constant(k.value, known, later, errors))
                           for k in expr.keywords))
    kind = "a column declaration" if isinstance(expr, ast.Typed) else "a pipe"
    errors.append(Diagnostic(codes.WRONG_KIND, f"a param's value must be a constant, found {kind}", expr.span,
                             (WHAT_A_PARAM_IS,)))
    return expr


def fold_number(expr: ast.Expr, what: str, errors: list, other=None):
    """The value of constant arithmetic (literals, unary minus, + - * /), or None after reporting
    a number beyond float range, a division by zero or an overflow into `errors`. Anything else
    is handed to `other` (which may report it) and gives None. `what` prefixes the messages."""
    prefix = f"{what}: " if what else ""
    if isinstance(expr, ast.Number):
        if isinstance(expr.value, float) and not math.isfinite(expr.value):
            errors.append(Diagnostic(codes.OUT_OF_RANGE, f"{prefix}the number {short(expr.text)} is too large",
                                     expr.span, (TOO_LARGE,)))
            return None
        return expr.value
    if isinstance(expr, ast.Neg):
        inner = fold_number(expr.operand, what, errors, other)
        return None if inner is None else -inner
    if not isinstance(expr, ast.BinOp):
        if other is not None:
            other(expr)
        return None
    left, right = fold_number(expr.left, what, errors, other), fold_number(expr.right, what, errors, other)
    if left is None or right is None:
        return None
    if expr.op == "/" and right == 0:
        errors.append(Diagnostic(codes.OUT_OF_RANGE, "division by zero", expr.span))
        return None
    try:
        value = ARITHMETIC[expr.op](left, right)
        finite = math.isfinite(value)
    except OverflowError:  # whole numbers beyond float range
        finite = False
    if not finite:
        errors.append(Diagnostic(codes.OUT_OF_RANGE, f"{prefix}{short(expr.span.text)} is too large", expr.span,
                                 (TOO_LARGE,)))
        return None
    return value


def _respan(node, span: Span):
    """A copy of a syntax tree with every span set to `span` (the place that names the param)."""
    return ast.rebuild(node, respan=lambda _: span)


# Fields that hold a name the user declares or calls, never a value: a param does not replace them.
_NOT_VALUES = {(ast.Typed, "name"), (ast.Typed, "type"), (ast.Call, "func"), (ast.Keyword, "name"),
               (ast.Assign, "target"), (ast.Section, "kind"), (ast.Section, "name"), (ast.Block, "name")}


def _note(name: str, value, stmt: ast.Assign, spec_source) -> str:
    """What an error where the param is used says of it: `'n_factors' is 0 (--set)`."""
    text = short(stmt.value.span.text.strip())
    where = f"params, line {stmt.target.span.line}" if stmt.value.span.source is spec_source else "--set"
    shown = short(show_value(value))
    return f"'{name}' is {shown}" + (f" ({text}; {where})" if shown != text else f" ({where})")


def _substitute(node, exprs: dict[str, ast.Expr], notes: dict[str, str], used: set[str], uses: dict):
    """A copy of a block with every name of a param, where a value stands, replaced by its value."""
    def replace(item):
        if isinstance(item, ast.Command):
            return item
        if not isinstance(item, ast.Name) or item.id not in exprs:
            return None
        used.add(item.id)
        uses[(item.span.source.path, item.span.start, item.span.end)] = (item.id, notes[item.id])
        return _respan(exprs[item.id], item.span)

    return ast.rebuild(node, replace, keep=_NOT_VALUES)


def short(text: str) -> str:
    """A number or expression as written, cut short when it is very long."""
    return text if len(text) <= 24 else f"{text[:8]}... ({len(text)} characters)"


def show_value(value) -> str:
    """A folded value as a spec would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Written):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(show_value(v) for v in value) + ")"
    return str(value)


ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _fold(expr: ast.Expr):
    """The Python value of a constant: numbers folded, strings, booleans, tuples; a call as Written."""
    if isinstance(expr, (ast.Number, ast.String)):
        return expr.value
    if isinstance(expr, ast.Name):
        return expr.id == "true"
    if isinstance(expr, (ast.Neg, ast.BinOp)):
        value = fold_number(expr, "", [])  # its errors are reported where the param is defined
        return Written(expr.span.text) if value is None else value
    if isinstance(expr, (ast.TupleExpr, ast.ListExpr)):
        return tuple(_fold(i) for i in expr.items)
    return Written(expr.span.text)
