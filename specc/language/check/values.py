"""Values and binding, shared by every block's check: syntax-tree constants -> numbers, strings
and flags within their bounds, and calls -> their arguments by name, each mistake a diagnostic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from specc.data.sources import SOURCES
from specc.data.splits import SPLITS
from specc.language import ast, codes, params
from specc.language.codes import Code
from specc.language.diagnostics import Diagnostic, suggest
from specc.language.source import Span
from specc.language.spec import CATEGORIES, CATEGORY, CLASSES, FLOAT, HISTORY, PROCS
from specc.model import ops
from specc.model.ops.base import Bool, Int, Real, Reals
from specc.training import losses, optimizers

BLOCKS = ("data", "model", "train")
OPTIONAL_BLOCKS = (params.BLOCK,)
DATA_SETTINGS = ("source", "inputs", "target", "valid", "batch", "procs", "keep_classes", "train_rows", "augment")
TABLE_SETTINGS = ("source", "key", "columns")  # a side table's section: `table NAME { source, key, columns }`
TRAIN_SETTINGS = ("loss", "metrics", "optimizer", "seed", "l2", "stop_on_nan", "precision")
# The arithmetic the forward pass is computed in while training: a named choice, since it changes the maths.
PRECISIONS = {"fp32": "float32 throughout", "bf16": "the forward pass under bfloat16 autocast, weights and "
              "loss in float32"}
COLUMN_TYPES = (CATEGORY, FLOAT, CATEGORIES)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a function a spec may call."""

    name: str
    required: bool = False
    variadic: bool = False  # takes every remaining positional argument (at least one)


def _sig(*names: str) -> tuple[Param, ...]:
    """Parameters in order; a trailing '?' marks an optional one, a leading '*' a variadic one."""
    return tuple(Param(n.strip("?*"), not n.endswith("?"), n.startswith("*")) for n in names)


# Every function a spec may call, by where it may appear. `--set` uses these to map a
# keyword onto a positional argument.
SIGNATURES: dict[str, dict[str, tuple[Param, ...]]] = {
    # the sources of specc.data.sources: each source's declaration gives its parameters
    "source": {name: tuple(Param(f.name, f.required) for f in defn.params) for name, defn in SOURCES.items()},
    "augment": {
        "flip": _sig(),
        "crop": _sig("padding"),
    },
    "target": {
        "implicit": _sig("user", "item", "negatives?", "sampling?", "top_k?", "rating?", "threshold?", "view?"),
    },
    # the splits of specc.data.splits: each split's declaration gives its parameters
    "valid": {name: tuple(Param(f.name, f.required) for f in defn.params) for name, defn in SPLITS.items()},
    # the ops of specc.model.ops: each op's declaration gives its parameters
    "model": {name: tuple(Param(f.name, f.required, getattr(f, "many", False)) for f in defn.params)
              for name, defn in ops.FUNCTIONS.items()},
    # the optimizers of specc.training.optimizers (aliases too): each declaration gives its parameters
    "optimizer": {name: tuple(Param(f.name, f.required) for f in defn.params)
                  for name, defn in optimizers.NAMES.items()},
    "fit": {
        "fit": _sig("epochs", "lr"),
        "fit_one_cycle": _sig("epochs", "lr", "pct_start?", "div?", "final_div?", "moms?"),
    },
    "lr": {
        "slice": _sig("low", "high?", "div?"),
    },
    "stage": {
        "early_stop": _sig("monitor?", "patience?", "keep_best?"),
    },
}
# the losses and metrics of specc.training.losses: name -> declaration (the target kind it needs, ...)
LOSSES = losses.LOSSES
METRICS = losses.METRICS
# Words a spec uses as names (functions, losses, metrics, procs, types...): a param cannot take one.
RESERVED = frozenset({"true", "false", CLASSES, "find", "valid_loss", HISTORY, *BLOCKS, *LOSSES, *METRICS, *PROCS,
                      *COLUMN_TYPES, *(f for table in SIGNATURES.values() for f in table)})


@dataclass(frozen=True, slots=True)
class Settings:
    """A settings block split up: its `name = value` lines by name, its call statements and
    sections in order, and whether it held a call statement of an unknown name."""

    found: dict[str, ast.Assign]
    statements: tuple
    unknown_call: bool


class Checker:
    """The diagnostics of one spec, and the readers of constants and calls that every block uses."""

    def __init__(self, base_dirs: dict[str, Path]):
        self.base_dirs = base_dirs  # source path -> folder its relative paths resolve against
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.params: tuple[str, ...] = ()  # the params block's names, for `did you mean` at a misspelt one

    # ------------------------------------------------------------ reporting

    def error(self, code: Code, message: str, span: Span | None, notes=()) -> None:
        self.errors.append(Diagnostic(code, message, span, tuple(notes)))

    def warn(self, code: Code, message: str, span: Span | None, notes=()) -> None:
        self.warnings.append(Diagnostic(code, message, span, tuple(notes), severity="warning"))

    def base_dir(self, span: Span) -> Path:
        """The folder a path written at `span` is relative to (the spec's own, or the cwd for --set)."""
        return self.base_dirs.get(span.source.path, Path.cwd())

    # ------------------------------------------------------------ constants

    def number(self, expr: ast.Expr, what: str) -> float | None:
        """A constant number (literals, unary minus, + - * / of constants)."""
        def not_a_number(other: ast.Expr) -> None:
            if isinstance(other, ast.Name):  # a param's name would have been put in: a misspelt one?
                self.error(codes.WRONG_KIND, f"{what}: expected a number, found the name '{other.id}'", other.span,
                           suggest(other.id, self.params))
            else:
                self.error(codes.WRONG_KIND, f"{what}: expected a number, found {kind_of(other)}", other.span)

        return params.fold_number(expr, what, self.errors, not_a_number)

    def real(self, expr: ast.Expr, what: str, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False) -> float | None:
        """A constant number within [low, high] (`*_open`: the bound itself excluded)."""
        value = self.number(expr, what)
        if value is None:
            return None
        value = float(value)
        bad = not math.isfinite(value)
        if low is not None and (value < low or (low_open and value == low)):
            bad = True
        if high is not None and (value > high or (high_open and value == high)):
            bad = True
        if bad:
            self.error(codes.OUT_OF_RANGE, f"{what} must be {_range_text(low, high, low_open, high_open)}, "
                       f"found {fmt(value)}", expr.span)
            return None
        return value

    def integer(self, expr: ast.Expr, what: str, low: int = 0, high: int = 2**31 - 1) -> int | None:
        """A constant whole number in [low, high]."""
        value = self.number(expr, what)
        if value is None:
            return None
        if not isinstance(value, int) and not (math.isfinite(value) and float(value).is_integer()):
            self.error(codes.NOT_WHOLE, f"{what}: expected a whole number, found {fmt(value)}", expr.span)
            return None
        value = int(value)
        if value < low:
            self.error(codes.OUT_OF_RANGE, f"{what} must be at least {low}, found {value}", expr.span)
            return None
        if value > high:
            self.error(codes.OUT_OF_RANGE, f"{what} must be at most {high:,}, found {fmt(value)}", expr.span)
            return None
        return value

    def boolean(self, expr: ast.Expr, what: str) -> bool | None:
        """`true` or `false`."""
        if isinstance(expr, ast.Name) and expr.id in ("true", "false"):
            return expr.id == "true"
        notes = suggest(expr.id.lower(), ("true", "false")) if isinstance(expr, ast.Name) else ()
        if isinstance(expr, ast.Name) and expr.id.lower() in ("true", "false"):
            notes = (f"did you mean '{expr.id.lower()}'?",)
        self.error(codes.WRONG_KIND, f"{what}: expected true or false, found {shown(expr)}", expr.span, notes)
        return None

    def string(self, expr: ast.Expr, what: str) -> str | None:
        """A string literal."""
        if isinstance(expr, ast.String):
            return expr.value
        self.error(codes.WRONG_KIND, f"{what}: expected a string, found {kind_of(expr)}", expr.span)
        return None

    def numbers(self, expr: ast.Expr, what: str, example: tuple[float, ...], low: float, high: float,
                high_open: bool = True) -> tuple[float, ...] | None:
        """A tuple of as many numbers as `example`, each in [low, high)."""
        count = len(example)
        if not isinstance(expr, ast.TupleExpr) or len(expr.items) != count:
            self.error(codes.WRONG_KIND, f"{what}: expected a tuple of {count} numbers, found {shown(expr)}",
                       expr.span, [f"e.g. {what}=({', '.join(f'{v:g}' for v in example)})"])
            return None
        values = [self.real(item, what, low, high, high_open=high_open) for item in expr.items]
        return None if any(v is None for v in values) else tuple(values)

    # ------------------------------------------------------------ calls

    def bind(self, expr: ast.Expr, table: str, what: str) -> tuple[str, dict[str, ast.Expr], ast.Call] | None:
        """Match a call against its signature: (function, {param: expr}, call) or None."""
        funcs = SIGNATURES[table]
        if isinstance(expr, ast.Name) and expr.id in funcs:
            expr = ast.Call(expr, (), (), expr.span)
        if not isinstance(expr, ast.Call):
            names = ", ".join(f"{f}(...)" for f in funcs)
            self.error(codes.WRONG_KIND, f"{what}: expected one of {names}, found {shown(expr)}", expr.span,
                       suggest(expr.id, self.params) if isinstance(expr, ast.Name) else ())
            return None
        name = expr.func.id
        if name not in funcs:
            self.error(codes.UNKNOWN_FUNCTION, f"unknown {what} '{name}'", expr.func.span,
                       suggest(name, funcs) or (f"expected one of: {', '.join(funcs)}",))
            return None
        return (name, bind_args(expr, funcs[name]), expr) if self.args_ok(expr, funcs[name]) else None

    def args_ok(self, call: ast.Call, signature: tuple[Param, ...]) -> bool:
        """Whether the call's arguments fit its signature (reporting each that does not)."""
        before = len(self.errors)
        name = call.func.id
        if signature and signature[-1].variadic:
            if not call.args:
                self.error(codes.BAD_ARGUMENTS, f"'{name}' needs at least one value", call.span,
                           [f"e.g. {name}(a, b)"])
            for kw in call.keywords:
                self.error(codes.BAD_ARGUMENTS, f"'{name}' has no argument '{kw.name.id}'", kw.name.span)
            return len(self.errors) == before
        takes = [f"'{name}' takes ({_params_text(signature)})"] if signature else []  # none, flip: no arguments
        if len(call.args) > len(signature):
            extra = call.args[len(signature)]
            limit = f"at most {len(signature)} arguments" if signature else "no arguments"
            self.error(codes.BAD_ARGUMENTS, f"'{name}' takes {limit}, found {len(call.args)}",
                       extra.span.to(call.args[-1].span), takes)
        given = {p.name for p in signature[:len(call.args)]}
        for kw in call.keywords:
            key = kw.name.id
            if key not in {p.name for p in signature}:
                self.error(codes.BAD_ARGUMENTS, f"'{name}' has no argument '{key}'", kw.name.span,
                           suggest(key, [p.name for p in signature]) or takes)
            elif key in given:
                self.error(codes.BAD_ARGUMENTS, f"argument '{key}' of '{name}' is given twice", kw.name.span)
            given.add(key)
        missing = [p.name for p in signature if p.required and p.name not in given]
        if missing:
            listed = ", ".join(f"'{m}'" for m in missing)
            self.error(codes.BAD_ARGUMENTS, f"'{name}' is missing {listed}", call.span, takes)
        return len(self.errors) == before

    # ------------------------------------------------------------ settings blocks

    def settings(self, block: ast.Block, allowed: tuple[str, ...], calls: tuple[str, ...] = (),
                 sections: tuple[str, ...] = (), body=None) -> Settings:
        """Split a settings block (or `body`, the lines of one of its sections) into its settings,
        its call statements of the names in `calls` and its sections of the kinds in `sections`."""
        found: dict[str, ast.Assign] = {}
        stmts: list = []
        unknown_call = False
        where = f"the {block.name.id} block"
        for stmt in block.body if body is None else body:
            if isinstance(stmt, ast.Section):
                if stmt.kind.id in sections:
                    stmts.append(stmt)
                else:
                    self.error(codes.UNKNOWN_SETTING, f"unknown section '{stmt.kind.id}' in {where}", stmt.kind.span,
                               suggest(stmt.kind.id, sections + ("group", "stage")) or
                               [f"sections here: {', '.join(sections) or 'none'}"])
            elif isinstance(stmt, ast.Command):
                self.error(codes.UNKNOWN_SETTING, f"unknown statement '{stmt.name.id}' in {where}", stmt.name.span,
                           suggest(stmt.name.id, allowed + calls) or
                           (["freeze and unfreeze go inside a stage { ... }"]
                            if stmt.name.id in ("freeze", "unfreeze") else []))
            elif isinstance(stmt, ast.CallStmt):
                func = stmt.call.func
                if func.id in calls:
                    stmts.append(stmt)
                else:
                    unknown_call = True
                    hint = suggest(func.id, calls) or (["here a statement is `name = value`"] if not calls else
                                                       [f"the statements here are {', '.join(calls)}(...)"])
                    self.error(codes.UNKNOWN_SETTING, f"unknown statement '{func.id}' in {where}", func.span, hint)
            elif stmt.target.id not in allowed:
                key, value = stmt.target.id, stmt.value
                if calls and isinstance(value, ast.Call) and value.func.id in calls:
                    self.error(codes.MISPLACED_STATEMENT, "a fit is a statement, not a setting", stmt.target.span,
                               [f"write `{value.func.id}(...)` on its own line, without `{key} =`"])
                    stmts.append(ast.CallStmt(value, stmt.span))
                    continue
                self.error(codes.UNKNOWN_SETTING, f"unknown setting '{key}' in {where}", stmt.target.span,
                           suggest(key, allowed + calls) or _elsewhere(key, block.name.id) or
                           [f"settings here: {', '.join(allowed)}"])
            elif stmt.target.id in found:
                self.error(codes.DEFINED_TWICE, f"setting '{stmt.target.id}' is given twice", stmt.target.span,
                           [f"first given at line {found[stmt.target.id].span.line}"])
            else:
                found[stmt.target.id] = stmt
        return Settings(found, tuple(stmts), unknown_call)


def bind_args(call: ast.Call, signature: tuple[Param, ...]) -> dict[str, ast.Expr]:
    """The call's arguments by parameter name (a variadic parameter gets the tuple of them)."""
    if signature and signature[-1].variadic:
        return {signature[-1].name: call.args}
    bound = {p.name: arg for p, arg in zip(signature, call.args)}
    bound.update({kw.name.id: kw.value for kw in call.keywords})
    return bound


def constant(c: Checker, field, expr: ast.Expr):
    """A constant argument within its declared bounds (a field of specc.model.ops.base: Real, Int,
    Bool, Reals), or None after reporting why not."""
    what = getattr(field, "what", None) or field.name
    if isinstance(field, Bool):
        return c.boolean(expr, what)
    if isinstance(field, Reals):
        return c.numbers(expr, what, field.example or field.default, field.low, field.high, field.high_open)
    if isinstance(field, Int):
        return c.integer(expr, what, low=field.low, high=field.high)
    if isinstance(field, Real):
        return c.real(expr, what, field.low, field.high, low_open=field.low_open, high_open=field.high_open)
    raise TypeError(f"no constant is read for a {type(field).__name__} field")  # a declaration's mistake


# ---------------------------------------------------------------- how messages show things


def kind_of(expr: ast.Expr) -> str:
    """How an expression reads in a message: 'a string', 'a list', ..."""
    return {
        ast.Number: "a number", ast.String: "a string", ast.Name: "a name", ast.Typed: "a column declaration",
        ast.ListExpr: "a list", ast.TupleExpr: "a tuple", ast.Call: "a call", ast.BinOp: "an expression",
        ast.Neg: "an expression", ast.Pipe: "a pipe",
    }[type(expr)]


def shown(expr: ast.Expr) -> str:
    """The expression as the user wrote it."""
    return expr.span.text


def fmt(value: float) -> str:
    """A number as messages show it (%g)."""
    return f"{value:g}"


def shape_text(shape) -> str:
    """`width 40` for a row, `shape (28, 28)` for more dimensions."""
    return f"width {shape[0]}" if len(shape) == 1 else f"shape ({', '.join(str(d) for d in shape)})"


def _params_text(signature: tuple[Param, ...]) -> str:
    return ", ".join(p.name if p.required else f"{p.name}=..." for p in signature)


def _range_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'above' if low_open else 'at least'} {fmt(low)}"
    if high is not None:
        return f"{'below' if high_open else 'at most'} {fmt(high)}"
    return "a finite number"


def _elsewhere(key: str, block: str) -> list[str]:
    """A note for a setting written in the wrong block."""
    if key in ("lr", "epochs"):
        return [f"{key} belongs in the fit statement: fit_one_cycle(epochs=..., lr=...)"]
    for other, settings in (("data", DATA_SETTINGS), ("train", TRAIN_SETTINGS)):
        if key in settings and other != block:
            return [f"'{key}' belongs in the {other} block"]
    return []
