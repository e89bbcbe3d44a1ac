"""Check the data block's `valid = ...`: its call -> the checked split of its declaration
(specc.data.splits), each argument read as its field says and the columns it names checked against
the spec's inputs."""

from __future__ import annotations

from specc.data.files import resolved as resolved_path
from specc.data.splits import split_def
from specc.data.splits.base import DataColumn, FileName
from specc.language import ast, codes
from specc.language.check.values import Checker, constant, kind_of
from specc.language.diagnostics import suggest
from specc.language.spec import CATEGORY, FLOAT


def check_split(c: Checker, expr: ast.Expr, inputs, target):
    """The split a `valid = ...` call names, bound against its declaration: each argument checked as
    its field says, defaults filled in; None after reporting why not. `inputs` None: they did not
    check, and the columns the split names are not checked against them."""
    bound = c.bind(expr, "valid", "validation split")
    if bound is None:
        return None
    func, args, call = bound
    defn = split_def(func)
    before = len(c.errors)
    values = {f.name: _argument(c, f, args.get(f.name), call, inputs, target) for f in defn.params}
    if len(c.errors) > before:
        return None
    problem = defn.validate(values)
    if problem is not None:
        c.error(codes.CONFLICT, problem, expr.span)
        return None
    return defn.make(values, expr.span)


def _argument(c: Checker, field, expr: ast.Expr | None, call: ast.Call, inputs, target):
    """One argument as its field reads it (its default when not given), or None after an error."""
    if isinstance(field, DataColumn):
        return _data_column(c, field, expr, call, inputs, target)
    if expr is None:
        return field.default
    if isinstance(field, FileName):
        text = c.string(expr, field.name)
        if text is not None and ("\x00" in text or not text.strip()):
            c.error(codes.BAD_TEXT, f"{field.name}: expected a file name", expr.span)
            return None
        return None if text is None else resolved_path(c.base_dir(expr.span) / text)
    return constant(c, field, expr)


def _data_column(c: Checker, field: DataColumn, expr: ast.Expr | None, call: ast.Call, inputs, target) -> str | None:
    """The name of a column the split reads. A CATEGORY field names a category input; a NUMBER field
    a float input of one value a row, a float target, or a column the spec does not declare (read
    from the file as numbers, for the split alone)."""
    what = f"{call.func.id}'s {field.name}"
    if expr is not None and not isinstance(expr, (ast.Name, ast.String)):
        c.error(codes.WRONG_KIND, f"{what}: expected a column name, found {kind_of(expr)}", expr.span)
        return None
    name = field.default if expr is None else expr.id if isinstance(expr, ast.Name) else expr.value
    span = call.span if expr is None else expr.span
    if inputs is None:
        return name
    declared = {col.name: col for col in (*inputs, *(() if target is None else (target,)))}
    col = declared.get(name)
    categories = [col.name for col in inputs if col.kind == CATEGORY]
    if field.kind == CATEGORY and (col is None or col is target):
        given = (f"'{name}' is {field.name}'s default: name the users' column, {call.func.id}(..., "
                 f"{field.name}=COLUMN)",) if expr is None else suggest(name, categories)
        c.error(codes.UNKNOWN_NAME, f"{what}: no input column '{name}'", span,
                [*given, f"{call.func.id} groups the rows by a category input: here {', '.join(categories) or 'none'}"])
        return None
    if field.kind == CATEGORY and col.kind != CATEGORY:
        c.error(codes.WRONG_KIND, f"{what}: expected a category column, found '{name}', a {col.kind} column", span,
                [f"{call.func.id} groups the rows by a category input: here {', '.join(categories) or 'none'}"])
        return None
    if field.kind != CATEGORY and col is not None and (col.kind != FLOAT or col.shape):
        found = f"float({', '.join(str(d) for d in col.shape)})" if col.kind == FLOAT else col.kind
        c.error(codes.WRONG_KIND, f"{what}: expected a numeric column, found '{name}', a {found} column", span,
                [f"{call.func.id} orders each user's rows by it: a float column of one value a row (a column the "
                 "spec does not declare is read from the file as numbers)"])
        return None
    return name
