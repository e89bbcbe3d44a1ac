"""Check: syntax tree -> checked spec (specc.spec). Resolves names, types, widths and values,
and reports every error it finds at once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from specc import ast, params
from specc.data.files import resolved as resolved_path
from specc.diagnostics import Diagnostic, SpecError, suggest
from specc.source import Span
from specc.spec import (
    CATEGORY, CLASSES, FLOAT, SGD, Activation, Adam, BatchNorm, Binary, Column, Concat, CsvSource, DataSpec,
    Dot, Dropout, Embedding, Fit, FitOneCycle, Flatten, Input, Linear, ModelSpec, Node, NpzSource, RandomSplit,
    PROCS, RMSProp, RowSplit, SigmoidRange, Spec, Tabular, TrainSpec, LastSplit, MissingIndicator, Stage,
    EarlyStop, InitFrom, LRFind, LRSlice,
)

# Block name -> the settings it accepts (None: the block holds definitions, not settings).
BLOCKS = ("data", "model", "train")
OPTIONAL_BLOCKS = (params.BLOCK,)
DATA_SETTINGS = ("source", "inputs", "target", "valid", "batch", "procs", "keep_classes", "train_rows")
TRAIN_SETTINGS = ("loss", "metrics", "optimizer", "seed", "l2", "stop_on_nan")
COLUMN_TYPES = (CATEGORY, FLOAT)


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    required: bool = False
    variadic: bool = False  # takes every remaining positional argument (at least one)


def _sig(*names: str) -> tuple[Param, ...]:
    """Parameters in order; a trailing '?' marks an optional one, a leading '*' a variadic one."""
    return tuple(Param(n.strip("?*"), not n.endswith("?"), n.startswith("*")) for n in names)


# Every function a spec may call, by where it may appear. `--set` uses these to map a
# keyword onto a positional argument.
SIGNATURES: dict[str, dict[str, tuple[Param, ...]]] = {
    "source": {
        "csv": _sig("path", "delimiter?", "header?", "columns?", "missing?", "strip?"),
        "tsv": _sig("path", "header?", "columns?", "missing?", "strip?"),
        "npz": _sig("path"),
    },
    "valid": {
        "random": _sig("fraction", "seed?"),
        "rows": _sig("start", "end?"),
        "last": _sig("fraction"),
    },
    "model": {
        "embedding": _sig("column", "dim"),
        "dot": _sig("a", "b"),
        "sigmoid_range": _sig("x", "low", "high"),
        "linear": _sig("x", "out"),
        "relu": _sig("x"),
        "sigmoid": _sig("x"),
        "tanh": _sig("x"),
        "softmax": _sig("x"),
        "log_softmax": _sig("x"),
        "dropout": _sig("x", "p"),
        "batchnorm": _sig("x"),
        "flatten": _sig("x"),
        "concat": _sig("*values"),
        "tabular": _sig("layers", "cats?", "conts?", "ps?", "emb_drop?", "emb_sizes?", "out?"),
    },
    "optimizer": {
        "adam": _sig("betas?", "eps?", "wd?"),
        "adamw": _sig("betas?", "eps?", "wd?"),
        "sgd": _sig("momentum?", "wd?", "nesterov?", "dampening?"),
        "rmsprop": _sig("alpha?", "eps?", "momentum?", "wd?"),
    },
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
# loss -> (target kind, what the model's output must be)
LOSSES = {
    "mse": FLOAT, "l1": FLOAT, "bce": FLOAT, "bce_with_logits": FLOAT,
    "cross_entropy": CATEGORY, "nll": CATEGORY,
}
METRICS = {"rmse": FLOAT, "mse": FLOAT, "mae": FLOAT, "accuracy": CATEGORY, "error_rate": CATEGORY}
ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "log_softmax")
# Words a spec uses as names (functions, losses, metrics, procs, types...): a param cannot take one.
RESERVED = frozenset({"true", "false", CLASSES, "find", "valid_loss", *BLOCKS, *LOSSES, *METRICS, *PROCS,
                      *COLUMN_TYPES, *(f for table in SIGNATURES.values() for f in table)})


def _kind(expr: ast.Expr) -> str:
    """How an expression reads in a message: 'a string', 'a list', ..."""
    return {
        ast.Number: "a number", ast.String: "a string", ast.Name: "a name", ast.Typed: "a column declaration",
        ast.ListExpr: "a list", ast.TupleExpr: "a tuple", ast.Call: "a call", ast.BinOp: "an expression",
        ast.Neg: "an expression", ast.Pipe: "a pipe",
    }[type(expr)]


class _Checker:
    """Walks one spec file, collecting diagnostics; builds the checked spec if there are none."""

    def __init__(self, tree: ast.SpecFile, base_dirs: dict[str, Path]):
        self.tree = tree
        self.base_dirs = base_dirs  # source path -> folder its relative paths resolve against
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.inputs = self.target = None
        self.partial_inputs: tuple = ()
        self.procs_given: tuple[str, ...] = ()
        self.inputs_failed = False
        self.unknown_statement = False
        self.params = params.Resolved({})  # the params block, once resolved

    # ------------------------------------------------------------ reporting

    def error(self, code: str, message: str, span: Span | None, notes=()) -> None:
        self.errors.append(Diagnostic(code, message, span, tuple(notes)))

    def warn(self, code: str, message: str, span: Span | None, notes=()) -> None:
        self.warnings.append(Diagnostic(code, message, span, tuple(notes), severity="warning"))

    # ------------------------------------------------------------ constants

    def number(self, expr: ast.Expr, what: str) -> float | None:
        """A constant number (literals, unary minus, + - * / of constants)."""
        def not_a_number(other: ast.Expr) -> None:
            self.error("E301", f"{what}: expected a number, found {_kind(other)}", other.span)

        return params.fold_number(expr, what, self.errors, not_a_number)

    def real(self, expr: ast.Expr, what: str, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False) -> float | None:
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
            self.error("E302", f"{what} must be {_range_text(low, high, low_open, high_open)}, found {_fmt(value)}",
                       expr.span)
            return None
        return value

    def integer(self, expr: ast.Expr, what: str, low: int = 0, high: int = 2**31 - 1) -> int | None:
        value = self.number(expr, what)
        if value is None:
            return None
        if not isinstance(value, int) and not (math.isfinite(value) and float(value).is_integer()):
            self.error("E301", f"{what}: expected a whole number, found {_fmt(value)}", expr.span)
            return None
        value = int(value)
        if value < low:
            self.error("E302", f"{what} must be at least {low}, found {value}", expr.span)
            return None
        if value > high:
            self.error("E302", f"{what} must be at most {high:,}, found {_fmt(value)}", expr.span)
            return None
        return value

    def boolean(self, expr: ast.Expr, what: str) -> bool | None:
        if isinstance(expr, ast.Name) and expr.id in ("true", "false"):
            return expr.id == "true"
        notes = suggest(expr.id.lower(), ("true", "false")) if isinstance(expr, ast.Name) else ()
        if isinstance(expr, ast.Name) and expr.id.lower() in ("true", "false"):
            notes = (f"did you mean '{expr.id.lower()}'?",)
        self.error("E301", f"{what}: expected true or false, found {_show(expr)}", expr.span, notes)
        return None

    def string(self, expr: ast.Expr, what: str) -> str | None:
        if isinstance(expr, ast.String):
            return expr.value
        self.error("E301", f"{what}: expected a string, found {_kind(expr)}", expr.span)
        return None

    def numbers(self, expr: ast.Expr, what: str, example: tuple[float, ...], low: float, high: float,
                high_open: bool = True) -> tuple[float, ...] | None:
        count = len(example)
        if not isinstance(expr, ast.TupleExpr) or len(expr.items) != count:
            self.error("E301", f"{what}: expected a tuple of {count} numbers, found {_show(expr)}", expr.span,
                       [f"e.g. {what}=({', '.join(f'{v:g}' for v in example)})"])
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
            self.error("E301", f"{what}: expected one of {names}, found {_show(expr)}", expr.span)
            return None
        name = expr.func.id
        if name not in funcs:
            self.error("E202", f"unknown {what} '{name}'", expr.func.span,
                       suggest(name, funcs) or (f"expected one of: {', '.join(funcs)}",))
            return None
        return (name, self.bind_args(expr, funcs[name]), expr) if self._args_ok(expr, funcs[name]) else None

    def _args_ok(self, call: ast.Call, params: tuple[Param, ...]) -> bool:
        before = len(self.errors)
        name = call.func.id
        if params and params[-1].variadic:
            if not call.args:
                self.error("E203", f"'{name}' needs at least one value", call.span, [f"e.g. {name}(a, b)"])
            for kw in call.keywords:
                self.error("E203", f"'{name}' has no argument '{kw.name.id}'", kw.name.span)
            return len(self.errors) == before
        if len(call.args) > len(params):
            extra = call.args[len(params)]
            self.error("E203", f"'{name}' takes at most {len(params)} arguments, found {len(call.args)}",
                       extra.span.to(call.args[-1].span), [f"'{name}' takes ({_params_text(params)})"])
        given = {p.name for p in params[:len(call.args)]}
        for kw in call.keywords:
            key = kw.name.id
            if key not in {p.name for p in params}:
                self.error("E203", f"'{name}' has no argument '{key}'", kw.name.span,
                           suggest(key, [p.name for p in params]) or [f"'{name}' takes ({_params_text(params)})"])
            elif key in given:
                self.error("E203", f"argument '{key}' of '{name}' is given twice", kw.name.span)
            given.add(key)
        missing = [p.name for p in params if p.required and p.name not in given]
        if missing:
            listed = ", ".join(f"'{m}'" for m in missing)
            self.error("E203", f"'{name}' is missing {listed}", call.span, [f"'{name}' takes ({_params_text(params)})"])
        return len(self.errors) == before

    @staticmethod
    def bind_args(call: ast.Call, params: tuple[Param, ...]) -> dict[str, ast.Expr]:
        if params and params[-1].variadic:
            return {params[-1].name: call.args}
        bound = {p.name: arg for p, arg in zip(params, call.args)}
        bound.update({kw.name.id: kw.value for kw in call.keywords})
        return bound

    # ------------------------------------------------------------ blocks

    def run(self) -> Spec | None:
        blocks: dict[str, ast.Block] = {}
        end = self.tree.source.end_span()
        if not self.tree.blocks and not self.tree.commands:
            self.error("E104", "the spec is empty", end, ["a spec has a data, a model and a train block;"
                                                          " see specs/collab.spec"])
            return None
        misspelt: set[str] = set()
        for block in self.tree.blocks:
            name = block.name.id
            if name not in BLOCKS + OPTIONAL_BLOCKS:
                hint = suggest(name, BLOCKS + OPTIONAL_BLOCKS)
                misspelt.update(b for b in BLOCKS if hint and f"'{b}'" in hint[0])
                self.error("E101", f"unknown block '{name}'", block.name.span,
                           hint or [f"a spec has the blocks {', '.join(BLOCKS)} (and may have {params.BLOCK})"])
            elif name in blocks:
                first = blocks[name].name.span
                self.error("E103", f"block '{name}' is defined twice", block.name.span,
                           [f"first defined at line {first.line}"])
            else:
                blocks[name] = block
        for name in BLOCKS:
            if name not in blocks and name not in misspelt:
                self.error("E104", f"the spec has no '{name}' block", end,
                           [f"add `{name} {{ ... }}`; see specs/collab.spec"])
        resolved = params.resolve(blocks, RESERVED, self.tree.source)
        self.errors += resolved.errors
        self.warnings += resolved.warnings
        self.params = resolved
        blocks = resolved.blocks
        data = self.data(blocks["data"]) if "data" in blocks else None
        model = self.model(blocks["model"], data) if "model" in blocks else None
        train = self.train(blocks["train"], data, model) if "train" in blocks else None
        inits = self.inits(model)
        if self.errors or data is None or model is None or train is None:
            return None
        name = Path(self.tree.source.path).stem
        return Spec(name, data, model, train, self.tree.source, inits, resolved.values)

    def inits(self, model: ModelSpec | None) -> tuple[InitFrom, ...]:
        """Top-level `init GROUP from "RUN"` statements."""
        found = []
        for command in self.tree.commands:
            args = command.args
            if command.name.id != "init":
                self.error("E102", f"unknown statement '{command.name.id}'", command.name.span,
                           suggest(command.name.id, ("init",)) or
                           ["at the top level: blocks, and init GROUP from \"RUN\""])
                continue
            if len(args) != 3 or not isinstance(args[0], ast.Name) or not isinstance(args[1], ast.Name) \
                    or args[1].id != "from" or not isinstance(args[2], ast.String):
                self.error("E301", 'init: expected `init GROUP from "RUN_FOLDER"`', command.span)
                continue
            group, run = args[0], args[2]
            if model is not None and group.id not in model.groups:
                self.error("E201", f"unknown group '{group.id}'", group.span,
                           suggest(group.id, model.groups) or [f"the groups are {', '.join(model.groups)}"])
                continue
            if any(i.group == group.id for i in found):
                self.error("E103", f"group '{group.id}' is initialised twice", group.span)
                continue
            if "\x00" in run.value or not run.value.strip():
                self.error("E302", "init: expected the path of a run folder", run.span)
                continue
            base = self.base_dirs.get(run.span.source.path, Path.cwd())
            found.append(InitFrom(group.id, resolved_path(base / run.value), command.span))
        return tuple(found)

    def settings(self, block: ast.Block, allowed: tuple[str, ...], calls: tuple[str, ...] = (),
                 sections: tuple[str, ...] = (), body=None) -> tuple[dict, list]:
        """Split a settings block into {name: Assign} and a list of call statements (and of the
        sections of the kinds given)."""
        found: dict[str, ast.Assign] = {}
        stmts: list = []
        for stmt in block.body if body is None else body:
            if isinstance(stmt, ast.Section):
                if stmt.kind.id in sections:
                    stmts.append(stmt)
                else:
                    self.error("E102", f"unknown section '{stmt.kind.id}' in the {block.name.id} block",
                               stmt.kind.span, suggest(stmt.kind.id, sections + ("group", "stage")) or
                               [f"sections here: {', '.join(sections) or 'none'}"])
                continue
            if isinstance(stmt, ast.Command):
                self.error("E102", f"unknown statement '{stmt.name.id}' in the {block.name.id} block",
                           stmt.name.span, suggest(stmt.name.id, allowed + calls) or
                           (["freeze and unfreeze go inside a stage { ... }"]
                            if stmt.name.id in ("freeze", "unfreeze") else []))
                continue
            if isinstance(stmt, ast.CallStmt):
                func = stmt.call.func
                if func.id in calls:
                    stmts.append(stmt)
                else:
                    self.unknown_statement |= block.name.id == "train"
                    hint = suggest(func.id, calls) or (["here a statement is `name = value`"] if not calls else
                                                       [f"the statements here are {', '.join(calls)}(...)"])
                    self.error("E102", f"unknown statement '{func.id}' in the {block.name.id} block", func.span, hint)
                continue
            key = stmt.target.id
            if key not in allowed:
                value = stmt.value
                if calls and isinstance(value, ast.Call) and value.func.id in calls:
                    self.error("E102", "a fit is a statement, not a setting", stmt.target.span,
                               [f"write `{value.func.id}(...)` on its own line, without `{key} =`"])
                    stmts.append(ast.CallStmt(value, stmt.span))
                    continue
                self.error("E102", f"unknown setting '{key}' in the {block.name.id} block", stmt.target.span,
                           suggest(key, allowed + calls) or _elsewhere(key, block.name.id) or
                           [f"settings here: {', '.join(allowed)}"])
            elif key in found:
                self.error("E103", f"setting '{key}' is given twice", stmt.target.span,
                           [f"first given at line {found[key].span.line}"])
            else:
                found[key] = stmt
        return found, stmts

    # ------------------------------------------------------------ data

    def data(self, block: ast.Block) -> DataSpec | None:
        found, _ = self.settings(block, DATA_SETTINGS)
        ok = True
        for key in ("source", "inputs", "target"):
            if key not in found:
                self.error("E104", f"the data block has no '{key}'", block.name.span,
                           [{"source": 'e.g. source = csv("data/ratings.csv")',
                             "inputs": "e.g. inputs = [user: category, item: category]",
                             "target": "e.g. target = rating: float"}[key]])
                ok = False
        source = self.source(found["source"].value) if "source" in found else None
        self.partial_inputs = ()
        inputs = self.columns(found["inputs"].value) if "inputs" in found else None
        if "inputs" not in found:
            self.inputs_failed = True
        target = self.column(found["target"].value, "target") if "target" in found else None
        # The model block is checked against these even when other data settings are wrong.
        self.inputs, self.target = inputs, target
        valid = self.split(found["valid"].value) if "valid" in found else None
        batch = self.integer(found["batch"].value, "batch", low=1) if "batch" in found else 64
        procs = self.procs(found["procs"].value) if "procs" in found else ()
        self.procs_given = procs or ()
        keep: tuple | None = ()
        if "keep_classes" in found:
            value = found["keep_classes"].value
            items = value.items if isinstance(value, ast.ListExpr) else ()
            if not items:
                self.error("E301", "keep_classes: expected a list of class values, e.g. [0, 1, 2]", value.span)
                keep = None
            else:
                keep = tuple(str(i.value) if isinstance(i, (ast.Number, ast.String)) else None for i in items)
                if None in keep:
                    self.error("E301", "keep_classes: expected numbers or strings", value.span)
                    keep = None
            if target is not None and target.kind != CATEGORY:
                self.error("E301", "keep_classes needs a category target", found["keep_classes"].target.span)
                keep = None
        train_rows = self.integer(found["train_rows"].value, "train_rows", low=1) if "train_rows" in found else 0
        if inputs is not None and target is not None:
            for col in inputs:
                if col.name == target.name:
                    self.error("E103", f"column '{col.name}' is both an input and the target", target.span)
        if target is not None and target.kind == CATEGORY and target.shape:
            self.error("E301", "a category target holds one value per row", target.span)
            return None
        if isinstance(source, CsvSource) and inputs is not None and target is not None:
            for col in (*inputs, target):
                if col.shape:
                    self.error("E301", f"column '{col.name}': a CSV column holds one value per row", col.span,
                               ["arrays per row come from npz(...) sources"])
        if isinstance(source, CsvSource) and source.columns is not None and inputs is not None and \
                target is not None:
            for col in (*inputs, target):
                if col.name not in source.columns:
                    self.error("E201", f"unknown column '{col.name}'", col.span,
                               suggest(col.name, source.columns) or
                               [f"the source's columns are {', '.join(source.columns)}"])
        if not ok or None in (source, inputs, target, batch, procs, keep, train_rows) or \
                ("valid" in found and valid is None):
            return None
        return DataSpec(source, inputs, target, valid, batch, procs, keep, train_rows or None)

    def procs(self, expr: ast.Expr) -> tuple[str, ...] | None:
        items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
        names: list[str] = []
        for item in items:
            if not isinstance(item, ast.Name) or item.id not in PROCS:
                shown = item.id if isinstance(item, ast.Name) else _show(item)
                self.error("E202", f"unknown proc '{shown}'", item.span,
                           suggest(shown, PROCS) or [f"procs: {', '.join(PROCS)}"])
                return None
            if item.id in names:
                self.error("E103", f"proc '{item.id}' is listed twice", item.span)
                return None
            names.append(item.id)
        return tuple(names)

    def source(self, expr: ast.Expr) -> CsvSource | None:
        bound = self.bind(expr, "source", "source")
        if bound is None:
            return None
        func, args, call = bound
        path_text = self.string(args["path"], "path")
        span = args["path"].span
        if path_text is not None and ("\x00" in path_text or not path_text.strip()):
            self.error("E302", "path: expected a file name", span)
            return None
        base = self.base_dirs.get(span.source.path, Path.cwd())
        if func == "npz":
            return None if path_text is None else NpzSource(resolved_path(base / path_text), span)
        delimiter = "\t" if func == "tsv" else ","
        if "delimiter" in args:
            delimiter = self.string(args["delimiter"], "delimiter")
            if delimiter is not None and len(delimiter) != 1:
                self.error("E302", f"delimiter must be one character, found {len(delimiter)}", args["delimiter"].span,
                           ['write a tab as "\\t"'])
                delimiter = None
        columns = None
        if "columns" in args:
            columns = self.column_names(args["columns"])
        header = columns is None
        if "header" in args:
            header = self.boolean(args["header"], "header")
        if header is False and "columns" not in args:
            self.error("E203", "a source without a header needs columns=[...]", call.span,
                       ["e.g. csv(\"u.data\", delimiter=\"\\t\", header=false, columns=[user, item, rating, time])"])
            return None
        missing: tuple[str, ...] = ()
        if "missing" in args:
            value = args["missing"]
            items = value.items if isinstance(value, ast.ListExpr) else (value,)
            texts = [self.string(item, "missing") for item in items]
            missing = None if None in texts else tuple(texts)
        strip = self.boolean(args["strip"], "strip") if "strip" in args else False
        if path_text is None or delimiter is None or header is None or ("columns" in args and columns is None) \
                or missing is None or strip is None:
            return None
        return CsvSource(resolved_path(base / path_text), delimiter, header, columns, span, missing, strip)

    def column_names(self, expr: ast.Expr) -> tuple[str, ...] | None:
        if not isinstance(expr, ast.ListExpr) or not expr.items:
            self.error("E301", f"columns: expected a list of column names, found {_show(expr)}", expr.span)
            return None
        names: list[str] = []
        for item in expr.items:
            if isinstance(item, (ast.Name, ast.String)):
                name = item.id if isinstance(item, ast.Name) else item.value
                if name in names:
                    self.error("E103", f"column '{name}' is named twice", item.span)
                names.append(name)
            else:
                self.error("E301", f"columns: expected a column name, found {_kind(item)}", item.span)
                return None
        return tuple(names)

    def column(self, expr: ast.Expr, what: str) -> Column | None:
        """`name: type`, `pixels: float(28, 28)`, optionally scaled: `pixels: float(784) / 255`."""
        scale = None
        if isinstance(expr, ast.BinOp) and isinstance(expr.left, ast.Typed) and expr.op in ("*", "/"):
            factor = self.real(expr.right, "scale", 0.0, low_open=True)
            if factor is None:
                return None
            scale = factor if expr.op == "*" else 1.0 / factor
            whole, expr = expr, expr.left
        else:
            whole = expr
        if not isinstance(expr, ast.Typed):
            example = "rating: float" if what == "target" else "user: category"
            name = f"{expr.id}: ..." if isinstance(expr, ast.Name) else example
            self.error("E301", f"{what}: expected `column: type`, found {_kind(expr)}", expr.span,
                       [f"e.g. {name}; the types are {', '.join(COLUMN_TYPES)}"])
            return None
        type_name = expr.type if isinstance(expr.type, ast.Name) else expr.type.func
        kind = type_name.id
        if kind not in COLUMN_TYPES:
            self.error("E301", f"unknown column type '{kind}'", type_name.span,
                       suggest(kind, COLUMN_TYPES) or [f"the types are {', '.join(COLUMN_TYPES)}"])
            return None
        shape: tuple[int, ...] = ()
        if isinstance(expr.type, ast.Call):
            call = expr.type
            if kind != FLOAT or call.keywords or not call.args:
                self.error("E301", "only float columns take a shape, as in float(784) or float(28, 28)",
                           call.span)
                return None
            dims = [self.integer(a, "a column's size", low=1, high=2**24) for a in call.args]
            if None in dims:
                return None
            shape = tuple(dims)
        if scale is not None and kind != FLOAT:
            self.error("E301", "only float columns can be scaled", whole.span)
            return None
        return Column(expr.name.id, kind, whole.span, shape, scale)

    def columns(self, expr: ast.Expr) -> tuple[Column, ...] | None:
        if not isinstance(expr, ast.ListExpr) or not expr.items:
            self.error("E301", f"inputs: expected a list of `column: type`, found {_show(expr)}", expr.span,
                       ["e.g. inputs = [user: category, item: category]"])
            return None
        cols = [self.column(item, "inputs") for item in expr.items]
        good = tuple(c for c in cols if c is not None)
        self.partial_inputs = good
        if len(good) != len(cols):
            self.inputs_failed = True
            return None
        seen: dict[str, Column] = {}
        for col in cols:
            if col.name in seen:
                first = seen[col.name].span
                where = "earlier on this line" if first.line == col.span.line else f"at line {first.line}"
                self.error("E103", f"input column '{col.name}' is declared twice", col.span,
                           [f"first declared {where}"])
            seen[col.name] = col
        return tuple(cols)

    def split(self, expr: ast.Expr):
        bound = self.bind(expr, "valid", "validation split")
        if bound is None:
            return None
        func, args, _ = bound
        if func == "last":
            fraction = self.real(args["fraction"], "validation fraction", 0.0, 1.0, low_open=True, high_open=True)
            return None if fraction is None else LastSplit(fraction, expr.span)
        if func == "random":
            fraction = self.real(args["fraction"], "validation fraction", 0.0, 1.0, low_open=True, high_open=True)
            seed = self.integer(args["seed"], "seed") if "seed" in args else 0
            return None if fraction is None or seed is None else RandomSplit(fraction, seed, expr.span)
        start = self.integer(args["start"], "first validation row")
        end = self.integer(args["end"], "end row", low=1) if "end" in args else None
        if start is not None and end is not None and end <= start:
            self.error("E302", f"rows({start}, {end}): the end must come after the start", expr.span)
            return None
        return None if start is None or ("end" in args and end is None) else RowSplit(start, end, expr.span)

    # ------------------------------------------------------------ model

    def model(self, block: ast.Block, data: DataSpec | None) -> ModelSpec | None:
        # With broken inputs, the columns that did parse are still checked; other names that
        # could be columns pass silently, so that one typo is reported once.
        inputs = self.inputs if self.inputs is not None else self.partial_inputs
        columns = {c.name: c for c in inputs}
        if "fill_missing" in self.procs_given:  # `<name>_na`: missing or not, for each float input
            for col in inputs:
                if col.kind == FLOAT and not col.shape:
                    columns[f"{col.name}_na"] = Column(f"{col.name}_na", CATEGORY, col.span)
        builder = _ModelBuilder(self, columns, self.target, lenient=self.inputs_failed)
        builder.procs = self.procs_given
        groups: list[str] = []
        statements: list[tuple[ast.Assign, str]] = []  # (statement, its group)
        for stmt in block.body:
            if isinstance(stmt, ast.Section) and stmt.kind.id == "group":
                if stmt.name.id in groups:
                    self.error("E103", f"group '{stmt.name.id}' is defined twice", stmt.name.span)
                groups.append(stmt.name.id)
                for inner in stmt.body:
                    if isinstance(inner, ast.Assign):
                        statements.append((inner, stmt.name.id))
                    else:
                        self.error("E102", "a group holds value definitions, `name = ...`", inner.span)
            elif isinstance(stmt, ast.Assign):
                statements.append((stmt, "model"))
            elif isinstance(stmt, ast.CallStmt):
                self.error("E102", "a model statement names its value", stmt.span,
                           [f"write `name = {stmt.call.func.id}(...)`"])
            else:
                kind = stmt.kind if isinstance(stmt, ast.Section) else stmt.name
                self.error("E102", f"unknown statement '{kind.id}' in the model block", kind.span,
                           suggest(kind.id, ["group"]) or ["the model block defines values, and `group NAME { ... }`"])
        builder.later = {s.target.id: s.target.span.line for s, _ in statements}
        for stmt, group in statements:
            builder.group = group
            builder.define(stmt)
        if "out" not in builder.defined:
            if not any(isinstance(s, ast.Assign) and s.target.id == "out" for s in block.body):
                self.error("E104", "the model block has no 'out'", block.name.span,
                           ["the value named 'out' is the model's prediction"])
            return None
        out = builder.nodes[builder.defined["out"]]
        if data is None:
            return None
        for col in data.inputs:
            if col.name not in builder.used_columns:
                self.warn("W201", f"input column '{col.name}' is not used by the model", col.span)
        used = tuple(c.name for c in data.inputs if c.name in builder.used_columns)
        if groups:
            for node in builder.nodes.values():
                if node.group == "model" and _has_weights(node.op):
                    self.error("E105", f"'{node.name}' has weights but is in no group", node.span,
                               [f"with groups, every layer with weights belongs to one: {', '.join(groups)}"])
        if not builder.ok or self.errors:
            return None
        return ModelSpec(tuple(builder.nodes.values()), out.name, used, tuple(groups) or ("model",))

    # ------------------------------------------------------------ train

    def train(self, block: ast.Block, data: DataSpec | None, model: ModelSpec | None) -> TrainSpec | None:
        calls = tuple(SIGNATURES["fit"]) + tuple(SIGNATURES["stage"])
        found, stmts = self.settings(block, TRAIN_SETTINGS, calls=calls, sections=("stage",))
        sections = [s for s in stmts if isinstance(s, ast.Section)]
        fits = [s for s in stmts if isinstance(s, ast.CallStmt) and s.call.func.id in SIGNATURES["fit"]]
        stops = [s for s in stmts if isinstance(s, ast.CallStmt) and s.call.func.id == "early_stop"]
        target_kind = data.target.kind if data is not None else None
        loss = None
        if "loss" not in found:
            self.error("E104", "the train block has no 'loss'", block.name.span, ["e.g. loss = mse"])
        else:
            loss = self.loss_name(found["loss"].value, LOSSES, "loss", target_kind)
        metrics: list[str] = []
        if "metrics" in found:
            expr = found["metrics"].value
            items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
            for item in items:
                metric = self.loss_name(item, METRICS, "metric", target_kind)
                if metric is not None and metric in metrics:
                    self.error("E103", f"metric '{metric}' is listed twice", item.span)
                elif metric is not None:
                    metrics.append(metric)
        optimizer = self.optimizer(found["optimizer"].value) if "optimizer" in found else Adam()
        seed = self.integer(found["seed"].value, "seed") if "seed" in found else 0
        l2 = self.real(found["l2"].value, "l2", 0.0) if "l2" in found else 0.0
        stop_on_nan = self.boolean(found["stop_on_nan"].value, "stop_on_nan") if "stop_on_nan" in found else True
        groups = model.groups if model is not None else None
        monitors = ("valid_loss", *metrics)
        stages: list = []
        if sections:
            for extra in fits + stops:
                self.error("E102", "with stages, fit and early_stop go inside a stage", extra.span)
            names: set[str] = set()
            for section in sections:
                if section.name.id in names:
                    self.error("E103", f"stage '{section.name.id}' is defined twice", section.name.span)
                names.add(section.name.id)
                stages.append(self.stage(block, section.name.id, section.body, section.kind.span, groups, monitors))
        else:
            if not fits and not self.unknown_statement:
                self.error("E104", "the train block has no fit statement", block.name.span,
                           ["e.g. fit_one_cycle(epochs=5, lr=5e-3)"])
            for extra in fits[1:]:
                self.error("E103", "a train block has one fit statement", extra.span,
                           [f"the first is at line {fits[0].span.line}; several fits are stages: "
                            "stage NAME { ... }"])
            if fits:
                stop = self.early_stop(stops, monitors)
                fit = self.fit(fits[0].call)
                stages.append(None if fit is None or stop is False else Stage("train", fit, (), stop))
        if model is not None and data is not None and loss is not None:
            self.output_fits(model.node(model.output), data.target, loss)
        if model is not None and optimizer is not None:
            # Before the data is read, the layers between known widths already give a lower bound.
            from specc.plan import memory_error

            width = {n.name: n.shape[0] if n.shape else 1 for n in model.nodes}
            known = {n.name: (width[n.inputs[0]] + 1) * n.op.out for n in model.nodes
                     if isinstance(n.op, Linear) and isinstance(n.op.out, int) and isinstance(width[n.inputs[0]], int)}
            too_big = memory_error(model, optimizer, known, lower_bound=True)
            if too_big is not None:
                self.errors.append(too_big)
        if self.errors or None in (loss, optimizer, seed, l2, stop_on_nan) or not stages or None in stages:
            return None
        return TrainSpec(loss, tuple(metrics), optimizer, tuple(stages), seed, l2, stop_on_nan)

    def stage(self, block: ast.Block, name: str, body, span: Span, groups, monitors):
        """One `stage NAME { ... }`: freeze / unfreeze, one fit statement, an optional early_stop."""
        calls = tuple(SIGNATURES["fit"]) + tuple(SIGNATURES["stage"])
        commands = [s for s in body if isinstance(s, ast.Command)]
        rest = [s for s in body if not isinstance(s, ast.Command)]
        found, stmts = self.settings(block, (), calls=calls, body=rest)
        fits = [s for s in stmts if isinstance(s, ast.CallStmt) and s.call.func.id in SIGNATURES["fit"]]
        stops = [s for s in stmts if isinstance(s, ast.CallStmt) and s.call.func.id == "early_stop"]
        frozen: list[str] = []
        for command in commands:
            word = command.name.id
            if word not in ("freeze", "unfreeze"):
                self.error("E102", f"unknown statement '{word}' in a stage", command.name.span,
                           suggest(word, ("freeze", "unfreeze")) or ["a stage holds freeze, unfreeze and a fit"])
                continue
            if word == "freeze" and not command.args:
                self.error("E203", "freeze needs the groups to freeze", command.span, ["e.g. freeze body"])
            for arg in command.args:
                if not isinstance(arg, ast.Name):
                    self.error("E301", f"{word}: expected a group name", arg.span)
                elif groups is not None and arg.id not in groups:
                    self.error("E201", f"unknown group '{arg.id}'", arg.span,
                               suggest(arg.id, groups) or [f"the groups are {', '.join(groups)}"])
                elif word == "freeze":
                    frozen.append(arg.id)
                elif arg.id in frozen:
                    frozen.remove(arg.id)
            if word == "unfreeze" and not command.args:
                frozen.clear()
        if groups is not None and frozen and set(frozen) >= set(groups):
            self.error("E302", f"stage '{name}' freezes every group: nothing would train", span)
        if not fits:
            self.error("E104", f"stage '{name}' has no fit statement", span, ["e.g. fit_one_cycle(epochs=1, lr=1e-3)"])
            return None
        for extra in fits[1:]:
            self.error("E103", "a stage has one fit statement", extra.span, ["give each fit a stage of its own"])
        stop = self.early_stop(stops, monitors)
        fit = self.fit(fits[0].call)
        if fit is None or stop is False:
            return None
        return Stage(name, fit, tuple(frozen), stop)

    def early_stop(self, stops, monitors):
        """The early_stop(...) statement, if any: EarlyStop, None, or False on an error."""
        if not stops:
            return None
        for extra in stops[1:]:
            self.error("E103", "early_stop is given twice", extra.span)
        bound = self.bind(stops[0].call, "stage", "statement")
        if bound is None:
            return False
        _, args, _ = bound
        monitor = "valid_loss"
        if "monitor" in args:
            expr = args["monitor"]
            if not isinstance(expr, ast.Name) or expr.id not in monitors:
                shown = expr.id if isinstance(expr, ast.Name) else _show(expr)
                self.error("E201", f"early_stop can watch {', '.join(monitors)}, not '{shown}'", expr.span,
                           suggest(shown, monitors) or ["a metric must be in the train block's metrics"])
                return False
            monitor = expr.id
        patience = self.integer(args["patience"], "patience", low=1) if "patience" in args else 3
        keep = self.boolean(args["keep_best"], "keep_best") if "keep_best" in args else True
        if patience is None or keep is None:
            return False
        return EarlyStop(monitor, patience, keep)

    def lr(self, expr: ast.Expr):
        """A learning rate: a number, slice(high), slice(low, high), slice(high, div=10), or find."""
        if isinstance(expr, ast.Name) and expr.id == "find":
            return LRFind()
        if isinstance(expr, ast.Call) and expr.func.id == "slice":
            if not self._args_ok(expr, SIGNATURES["lr"]["slice"]):
                return None
            args = self.bind_args(expr, SIGNATURES["lr"]["slice"])
            first = self.real(args["low"], "lr", 0.0, low_open=True)
            second = self.real(args["high"], "lr", 0.0, low_open=True) if "high" in args else None
            div = self.real(args["div"], "div", 0.0, low_open=True) if "div" in args else 3.0
            if first is None or div is None or ("high" in args and second is None):
                return None
            if "div" in args and second is not None:
                self.error("E203", "div applies to slice(high) alone: slice(1e-3, div=10)", args["div"].span)
                return None
            return LRSlice(first, second, div) if second is not None else LRSlice(None, first, div)
        return self.real(expr, "lr", 0.0, low_open=True)

    def output_fits(self, out, target, loss: str) -> None:
        """The model's output must be what the loss compares with the target."""
        if target.kind == FLOAT:
            if out.shape != (1,):
                self.error("E303", f"the model's output 'out' has {_shape_text(out.shape)}, but the target "
                           f"'{target.name}' is one number per row", out.span,
                           ["reduce it to width 1, e.g. with dot(a, b) or linear(1)"])
        elif len(out.shape) != 1 or out.shape[0] == 1:
            self.error("E303", f"'{loss}' needs one output per class, but 'out' has {_shape_text(out.shape)}",
                       out.span, ["end the model with linear(classes): 'classes' is the number of target classes"])

    def loss_name(self, expr: ast.Expr, table: dict[str, str], what: str, target_kind: str | None) -> str | None:
        if isinstance(expr, ast.Call) and not expr.args and not expr.keywords:
            expr = expr.func
        if not isinstance(expr, ast.Name):
            self.error("E301", f"{what}: expected a name such as {next(iter(table))}, found {_kind(expr)}", expr.span)
            return None
        if expr.id not in table:
            self.error("E202", f"unknown {what} '{expr.id}'", expr.span,
                       suggest(expr.id, table) or [f"known: {', '.join(table)}"])
            return None
        if target_kind is not None and table[expr.id] != target_kind:
            self.error("E304", f"{what} '{expr.id}' needs a {table[expr.id]} target, but the target is a {target_kind}",
                       expr.span)
            return None
        return expr.id

    def optimizer(self, expr: ast.Expr):
        bound = self.bind(expr, "optimizer", "optimizer")
        if bound is None:
            return None
        func, args, _ = bound
        wd = self.real(args["wd"], "wd", 0.0) if "wd" in args else 0.0
        momentum = self.real(args["momentum"], "momentum", 0.0, 1.0, high_open=True) if "momentum" in args else 0.0
        if func == "rmsprop":
            alpha = self.real(args["alpha"], "alpha", 0.0, 1.0, high_open=True) if "alpha" in args else 0.99
            eps = self.real(args["eps"], "eps", 0.0, low_open=True) if "eps" in args else 1e-8
            return None if None in (alpha, eps, momentum, wd) else RMSProp(alpha, eps, momentum, wd)
        if func in ("adam", "adamw"):
            betas = self.numbers(args["betas"], "betas", (0.9, 0.99), 0.0, 1.0) if "betas" in args else (0.9, 0.999)
            eps = self.real(args["eps"], "eps", 0.0, low_open=True) if "eps" in args else 1e-8
            return None if None in (betas, eps, wd) else Adam(betas, eps, wd)
        nesterov = self.boolean(args["nesterov"], "nesterov") if "nesterov" in args else False
        dampening = self.real(args["dampening"], "dampening", 0.0, 1.0, high_open=True) if "dampening" in args else 0.0
        if nesterov and (momentum == 0.0 or dampening):
            self.error("E302", "nesterov needs a momentum above 0 and no dampening", args["nesterov"].span)
            return None
        return None if None in (momentum, wd, nesterov, dampening) else SGD(momentum, wd, nesterov, dampening)

    def fit(self, call: ast.Call):
        bound = self.bind(call, "fit", "fit")
        if bound is None:
            return None
        func, args, _ = bound
        epochs = self.integer(args["epochs"], "epochs", low=1)
        lr = self.lr(args["lr"])
        if func == "fit":
            return None if None in (epochs, lr) else Fit(epochs, lr, call.span)
        pct = self.real(args["pct_start"], "pct_start", 0.0, 1.0, True, True) if "pct_start" in args else 0.3
        div = self.real(args["div"], "div", 0.0, low_open=True) if "div" in args else 25.0
        final_div = self.real(args["final_div"], "final_div", 0.0, low_open=True) if "final_div" in args else 1e4
        moms = self.numbers(args["moms"], "moms", (0.95, 0.85, 0.95), 0.0, 1.0) if "moms" in args else (0.95, 0.85, 0.95)
        if moms is not None and moms[0] != moms[2]:
            self.error("E302", f"moms: the cycle ends where it starts (torch's OneCycleLR), found "
                       f"{_fmt(moms[0])} and {_fmt(moms[2])}", args["moms"].span,
                       [f"e.g. moms=({_fmt(moms[0])}, {_fmt(moms[1])}, {_fmt(moms[0])})"])
            return None
        if None in (epochs, lr, pct, div, final_div, moms):
            return None
        return FitOneCycle(epochs, lr, pct, div, final_div, moms, call.span)


class _ModelBuilder:
    """Turns model statements into nodes with inferred shapes (the model's type system).

    Every value is a batch of rows; a node's shape is the shape of one row, (40,) for an
    embedding of 40, (28, 28) for an image. `classes` stands for the number of target classes
    until the data is read."""

    def __init__(self, checker: _Checker, columns: dict[str, Column], target: Column | None, lenient: bool):
        self.c = checker
        self.lenient = lenient  # the inputs did not check: unknown names may be columns
        self.columns = columns
        self.target = target
        self.nodes: dict[str, Node] = {}
        self.defined: dict[str, str] = {}  # spec name -> node name
        self.later: dict[str, int] = {}  # every name the block defines -> its line
        self.broken: set[str] = set()  # names whose definition failed: not reported again
        self.used_columns: set[str] = set()
        self.procs: tuple[str, ...] = ()
        self.group = "model"
        self.counters: dict[str, int] = {}
        self.reserved: set[str] = set(columns) | {CLASSES}
        self.ok = True

    def define(self, stmt: ast.Assign) -> None:
        name = stmt.target.id
        before = len(self.c.errors)
        if name in self.columns:
            self.c.error("E103", f"'{name}' is already an input column", stmt.target.span,
                         ["give the value another name"])
        elif name == CLASSES:
            self.c.error("E103", "'classes' is the number of target classes; give the value another name",
                         stmt.target.span)
        elif name in self.defined:
            first = self.nodes[self.defined[name]].span
            self.c.error("E103", f"'{name}' is defined twice", stmt.target.span, [f"first defined at line {first.line}"])
        else:
            self.reserved.add(name)
            value = self.value(stmt.value, name)
            if isinstance(value, str):
                self.defined[name] = value
            elif value is not None:
                self.c.error("E301", f"'{name}' must be a tensor value, found a constant", stmt.value.span)
            if not isinstance(value, str):
                self.broken.add(name)
        if len(self.c.errors) != before:
            self.ok = False

    def fresh(self, base: str) -> str:
        while True:
            count = self.counters.get(base, 0)
            self.counters[base] = count + 1
            name = base if count == 0 else f"{base}_{count}"
            if name not in self.reserved and name not in self.nodes:
                return name

    def add(self, name: str | None, base: str, op, inputs: tuple[str, ...], shape: tuple, span: Span) -> str:
        node_name = name if name is not None and name not in self.nodes else self.fresh(base)
        self.nodes[node_name] = Node(node_name, op, inputs, tuple(shape), span, self.group)
        return node_name

    def shape(self, node: str) -> tuple:
        return self.nodes[node].shape

    def value(self, expr: ast.Expr, name: str | None = None):
        """Lower an expression: a node name (a tensor value), a float (a constant), or None (an error)."""
        if isinstance(expr, ast.Number):
            value = self.c.number(expr, "constant")
            return None if value is None else float(value)
        if isinstance(expr, ast.Name):
            return self.reference(expr)
        if isinstance(expr, ast.Neg):
            inner = self.value(expr.operand)
            if inner is None:
                return None
            if isinstance(inner, float):
                return -inner
            return self.add(name, "neg", Binary("-", 0.0, True), (inner,), self.shape(inner), expr.span)
        if isinstance(expr, ast.BinOp):
            return self.binary(expr, name)
        if isinstance(expr, ast.Pipe):
            stage = expr.stage
            if isinstance(stage, ast.Name):
                stage = ast.Call(stage, (), (), stage.span)
            if not isinstance(stage, ast.Call):
                self.c.error("E301", f"after '|>' expected a function, found {_kind(stage)}", stage.span)
                return None
            return self.call(ast.Call(stage.func, (expr.value,) + stage.args, stage.keywords, expr.span), name)
        if isinstance(expr, ast.Call):
            return self.call(expr, name)
        self.c.error("E301", f"expected a model value, found {_kind(expr)}", expr.span)
        return None

    def reference(self, expr: ast.Name):
        ident = expr.id
        if ident in self.defined:
            return self.defined[ident]
        if ident in self.columns:
            col = self.columns[ident]
            if col.kind == CATEGORY:
                self.c.error("E301", f"'{ident}' is a category column; use it through an embedding", expr.span,
                             [f"e.g. embedding({ident}, 40)"])
                return None
            return self.input_node(ident)
        if self.target is not None and ident == self.target.name:
            self.c.error("E201", f"'{ident}' is the target; the model cannot read it", expr.span)
            return None
        if ident == CLASSES:
            self.c.error("E301", "'classes' is a size (the number of target classes), not a value", expr.span,
                         ["use it as linear(classes)"])
            return None
        if ident in self.broken or self.lenient:
            self.ok = False  # already reported where it went wrong
            return None
        if ident in self.later:
            self.c.error("E201", f"'{ident}' is used before it is defined (at line {self.later[ident]})", expr.span,
                         ["define values before the lines that use them"])
            return None
        known = set(self.defined) | {c for c, col in self.columns.items() if col.kind != CATEGORY}
        self.c.error("E201", f"unknown name '{ident}'", expr.span,
                     suggest(ident, known | set(self.columns) | set(SIGNATURES["model"])) or
                     ([f"defined so far: {', '.join(sorted(known))}"] if known else []))
        return None

    def input_node(self, column: str) -> str:
        """The node of a float input column, with the procs that apply to it."""
        col = self.columns[column]
        self.used_columns.add(column)
        if column not in self.nodes:
            scalar = not col.shape
            op = Input(column, col.scale, fill=scalar and "fill_missing" in self.procs,
                       normalize=scalar and "normalize" in self.procs, scalar=scalar)
            self.nodes[column] = Node(column, op, (), col.shape or (1,), col.span)
        return column

    def indicator_node(self, column: str) -> str:
        """The node of `<name>_na`, the missing-value indicator of float column `name`."""
        base = column[:-len("_na")]
        self.used_columns.add(base)
        if column not in self.nodes:
            self.nodes[column] = Node(column, MissingIndicator(base), (), (), self.columns[column].span)
        return column

    def is_indicator(self, column: str) -> bool:
        base = column[:-len("_na")] if column.endswith("_na") else None
        return base is not None and base in self.columns and self.columns[base].kind == FLOAT and \
            "fill_missing" in self.procs

    def tensor(self, expr: ast.Expr, what: str) -> str | None:
        value = self.value(expr)
        if isinstance(value, float):
            self.c.error("E301", f"{what}: expected a tensor value, found a number", expr.span)
            return None
        return value

    def flat(self, node: str, what: str, span: Span) -> bool:
        """Layers that mix features want one row of features, not an image."""
        if len(self.shape(node)) != 1:
            self.c.error("E303", f"{what} needs one row of features, found {_shape_text(self.shape(node))}", span,
                         [f"flatten it first: {node} |> flatten |> {what}(...)"])
            return False
        return True

    def binary(self, expr: ast.BinOp, name: str | None):
        left, right = self.value(expr.left), self.value(expr.right)
        if left is None or right is None:
            return None
        base = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[expr.op]
        if isinstance(left, float) and isinstance(right, float):
            folded = self.c.number(expr, "constant")
            return None if folded is None else float(folded)
        if isinstance(left, float) or isinstance(right, float):
            const, tensor = (left, right) if isinstance(left, float) else (right, left)
            if expr.op == "/" and isinstance(right, float) and right == 0.0:
                self.c.error("E302", "division by zero", expr.right.span)
                return None
            op = Binary(expr.op, const, isinstance(left, float))
            return self.add(name, base, op, (tensor,), self.shape(tensor), expr.span)
        sl, sr = self.shape(left), self.shape(right)
        if sl != sr and (1,) not in (sl, sr):
            self.c.error("E303", f"'{expr.op}' needs equal shapes (or width 1), found {_shape_text(sl)} and "
                         f"{_shape_text(sr)}", expr.span,
                         [f"'{_show(expr.left)}' has {_shape_text(sl)}, '{_show(expr.right)}' has {_shape_text(sr)}"])
            return None
        return self.add(name, base, Binary(expr.op), (left, right), sr if sl == (1,) else sl, expr.span)

    def size(self, expr: ast.Expr, what: str):
        """A layer size: a whole number, or `classes`."""
        if isinstance(expr, ast.Name) and expr.id == CLASSES:
            if self.target is not None and self.target.kind != CATEGORY:
                self.c.error("E301", f"'classes' is the number of classes of a category target, but the target "
                             f"'{self.target.name}' is a {self.target.kind}", expr.span)
                return None
            return CLASSES
        return self.c.integer(expr, what, low=1, high=2**24)

    def call(self, call: ast.Call, name: str | None):
        funcs = SIGNATURES["model"]
        func = call.func.id
        if func not in funcs:
            self.c.error("E202", f"unknown function '{func}'", call.func.span,
                         suggest(func, funcs) or [f"model functions: {', '.join(funcs)}"])
            return None
        if not self.c._args_ok(call, funcs[func]):
            return None
        args = self.c.bind_args(call, funcs[func])
        if func == "embedding":
            return self.embedding(call, args, name)
        if func == "tabular":
            return self.tabular(call, args, name)
        if func == "concat":
            parts = [self.tensor(v, "concat") for v in args["values"]]
            if None in parts:
                return None
            for part, expr in zip(parts, args["values"]):
                if not self.flat(part, "concat", expr.span):
                    return None
            widths = [self.shape(v)[0] for v in parts]
            if CLASSES in widths:
                self.c.error("E303", "concat of a value sized by 'classes' is not supported", call.span)
                return None
            return self.add(name, "concat", Concat(), tuple(parts), (sum(widths),), call.span)
        x = self.tensor(args["x"] if "x" in args else args["a"], func)
        if func == "dot":
            b = self.tensor(args["b"], "dot")
            if x is None or b is None:
                return None
            sa, sb = self.shape(x), self.shape(b)
            if sa != sb or len(sa) != 1:
                self.c.error("E303", f"dot needs two rows of the same width, found {_shape_text(sa)} and "
                             f"{_shape_text(sb)}", call.span,
                             [f"'{_show(args['a'])}' has {_shape_text(sa)}, '{_show(args['b'])}' has {_shape_text(sb)}"])
                return None
            return self.add(name, "dot", Dot(), (x, b), (1,), call.span)
        if func == "sigmoid_range":
            low = self.c.real(args["low"], "low")
            high = self.c.real(args["high"], "high")
            if low is not None and high is not None and high <= low:
                self.c.error("E302", f"sigmoid_range: high ({_fmt(high)}) must be above low ({_fmt(low)})",
                             args["low"].span.to(args["high"].span))
                return None
            if x is None or low is None or high is None:
                return None
            return self.add(name, "sigmoid_range", SigmoidRange(low, high), (x,), self.shape(x), call.span)
        if func == "linear":
            out = self.size(args["out"], "linear's output size")
            if x is None or out is None or not self.flat(x, "linear", call.span):
                return None
            if self.shape(x)[0] == CLASSES:
                self.c.error("E303", "linear of a value sized by 'classes' is not supported", call.span)
                return None
            return self.add(name, "linear", Linear(out), (x,), (out,), call.span)
        if func == "dropout":
            prob = self.c.real(args["p"], "dropout probability", 0.0, 1.0, high_open=True)
            if x is None or prob is None:
                return None
            return self.add(name, "dropout", Dropout(prob), (x,), self.shape(x), call.span)
        if x is None:
            return None
        if func == "batchnorm":
            if not self.flat(x, "batchnorm", call.span):
                return None
            return self.add(name, "batchnorm", BatchNorm(), (x,), self.shape(x), call.span)
        if func == "flatten":
            dims = self.shape(x)
            total = 1
            for d in dims:
                total = total * d if isinstance(d, int) else d
            return self.add(name, "flatten", Flatten(), (x,), (total,), call.span)
        # relu, sigmoid, tanh, softmax, log_softmax
        if func in ("softmax", "log_softmax") and not self.flat(x, func, call.span):
            return None
        return self.add(name, func, Activation(func), (x,), self.shape(x), call.span)

    def embedding(self, call: ast.Call, args: dict, name: str | None):
        col = args["column"]
        dim = self.c.integer(args["dim"], "embedding size", low=1, high=2**24)
        if not isinstance(col, ast.Name):
            self.c.error("E301", f"embedding: expected a category column, found {_kind(col)}", col.span)
            return None
        if col.id not in self.columns and self.lenient:
            # the column may be one that did not check: go on, to find the other errors
            if dim is None:
                return None
            self.ok = False
            return self.add(name, "embedding", Embedding(col.id, dim), (), (dim,), call.span)
        if col.id not in self.columns or self.columns[col.id].kind != CATEGORY:
            cats = [c for c, v in self.columns.items() if v.kind == CATEGORY]
            what = "a float column" if col.id in self.columns else "not an input column"
            self.c.error("E201", f"embedding: '{col.id}' is {what}; expected a category column", col.span,
                         suggest(col.id, cats) or ([f"category columns: {', '.join(cats)}"] if cats else []))
            return None
        if dim is None:
            return None
        if self.is_indicator(col.id):
            self.indicator_node(col.id)
        else:
            self.used_columns.add(col.id)
        return self.add(name, "embedding", Embedding(col.id, dim), (), (dim,), call.span)


    def names(self, expr: ast.Expr, what: str) -> list[ast.Name] | None:
        if not isinstance(expr, ast.ListExpr) or not all(isinstance(i, ast.Name) for i in expr.items):
            self.c.error("E301", f"{what}: expected a list of column names, found {_show(expr)}", expr.span)
            return None
        return list(expr.items)

    def tabular(self, call: ast.Call, args: dict, name: str | None):
        """fastai's tabular model as one node; specc.expand turns it into primitives."""
        before = len(self.c.errors)
        # By default every category input and every (one number per row) float input.
        cats = self.names(args["cats"], "cats") or [] if "cats" in args else [
            ast.Name(c, call.span) for c, v in self.columns.items() if v.kind == CATEGORY and not self.is_indicator(c)]
        conts = self.names(args["conts"], "conts") or [] if "conts" in args else [
            ast.Name(c, call.span) for c, v in self.columns.items() if v.kind == FLOAT and not v.shape]
        for item in cats:
            col = self.columns.get(item.id)
            if col is None or col.kind != CATEGORY:
                kinds = [c for c, v in self.columns.items() if v.kind == CATEGORY]
                what = "a float column" if col is not None else "not an input column"
                self.c.error("E201", f"tabular cats: '{item.id}' is {what}", item.span,
                             suggest(item.id, kinds) or [f"category columns: {', '.join(kinds)}"])
        for item in conts:
            col = self.columns.get(item.id)
            if col is None or col.kind != FLOAT or col.shape:
                kinds = [c for c, v in self.columns.items() if v.kind == FLOAT and not v.shape]
                what = "a category column" if col is not None and col.kind == CATEGORY else "not a float input column"
                self.c.error("E201", f"tabular conts: '{item.id}' is {what}", item.span,
                             suggest(item.id, kinds) or [f"float columns: {', '.join(kinds)}"])
        layers_expr = args["layers"]
        layers = []
        if not isinstance(layers_expr, ast.ListExpr):
            self.c.error("E301", f"layers: expected a list of sizes, e.g. [200, 100], found {_show(layers_expr)}",
                         layers_expr.span)
        else:
            layers = [self.c.integer(i, "layer size", low=1, high=2**20) for i in layers_expr.items]
        ps: list = [0.0] * len(layers)
        if "ps" in args:
            ps_expr = args["ps"]
            items = ps_expr.items if isinstance(ps_expr, ast.ListExpr) else (ps_expr,) * len(layers)
            if len(items) != len(layers):
                self.c.error("E203", f"ps: one dropout probability per layer ({len(layers)}), found {len(items)}",
                             ps_expr.span)
            ps = [self.c.real(i, "dropout probability", 0.0, 1.0, high_open=True) for i in items]
        emb_drop = self.c.real(args["emb_drop"], "emb_drop", 0.0, 1.0, high_open=True) if "emb_drop" in args else 0.0
        sizes: list[tuple[str, int]] = []
        if "emb_sizes" in args:
            value = args["emb_sizes"]
            items = value.items if isinstance(value, ast.ListExpr) else ()
            if not isinstance(value, ast.ListExpr):
                self.c.error("E301", "emb_sizes: expected a list of (column, size), e.g. [(workclass, 10)]",
                             value.span)
            for item in items:
                if not (isinstance(item, ast.TupleExpr) and len(item.items) == 2 and isinstance(item.items[0], ast.Name)):
                    self.c.error("E301", "emb_sizes: expected (column, size)", item.span)
                    continue
                column, size = item.items
                if column.id not in [c.id for c in cats]:
                    self.c.error("E201", f"emb_sizes: '{column.id}' is not one of the cats", column.span,
                                 suggest(column.id, [c.id for c in cats]))
                sizes.append((column.id, self.c.integer(size, "embedding size", low=1, high=2**24)))
        default_out = CLASSES if self.target is not None and self.target.kind == CATEGORY else 1
        out = self.size(args["out"], "tabular's output size") if "out" in args else default_out
        if len(self.c.errors) != before or None in (*layers, *ps, emb_drop, out) or any(s is None for _, s in sizes):
            return None
        if not cats and not conts:
            self.c.error("E203", "tabular needs some cats or conts", call.span)
            return None
        cat_names = [c.id for c in cats]
        # fill_missing gives each float column a `<name>_na` category; the tabular model embeds it too.
        cat_names += [f"{c.id}_na" for c in conts if self.is_indicator(f"{c.id}_na") and f"{c.id}_na" not in cat_names]
        for column in cat_names:
            if self.is_indicator(column):
                self.indicator_node(column)
            else:
                self.used_columns.add(column)
        for c in conts:
            self.input_node(c.id)
        op = Tabular(tuple(cat_names), tuple(c.id for c in conts), tuple(layers), tuple(ps), emb_drop,
                     tuple(sizes), out)
        return self.add(name, "tabular", op, (), (out,), call.span)


def _has_weights(op) -> bool:
    return isinstance(op, (Embedding, Linear, BatchNorm, Tabular))


def _shape_text(shape) -> str:
    return f"width {shape[0]}" if len(shape) == 1 else f"shape ({_dims(shape)})"


def _elsewhere(key: str, block: str) -> list[str]:
    """A note for a setting written in the wrong block."""
    if key in ("lr", "epochs"):
        return [f"{key} belongs in the fit statement: fit_one_cycle(epochs=..., lr=...)"]
    for other, settings in (("data", DATA_SETTINGS), ("train", TRAIN_SETTINGS)):
        if key in settings and other != block:
            return [f"'{key}' belongs in the {other} block"]
    return []


def _dims(shape) -> str:
    return ", ".join(str(d) for d in shape)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _show(expr: ast.Expr) -> str:
    """The expression as the user wrote it."""
    return expr.span.text


def _params_text(params: tuple[Param, ...]) -> str:
    return ", ".join(p.name if p.required else f"{p.name}=..." for p in params)


def _range_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'above' if low_open else 'at least'} {_fmt(low)}"
    if high is not None:
        return f"{'below' if high_open else 'at most'} {_fmt(high)}"
    return "a finite number"


def _at_param_uses(errors: list[Diagnostic], resolved: params.Resolved) -> list[Diagnostic]:
    """An error where a param was used says what the param is; where the param itself was
    already reported at its definition, its uses are not reported again."""
    out = []
    for d in errors:
        key = None if d.span is None else (d.span.source.path, d.span.start, d.span.end)
        if key not in resolved.uses:
            out.append(d)
            continue
        name, note = resolved.uses[key]
        if name not in resolved.failed:
            out.append(dataclasses.replace(d, notes=d.notes + (note,)))
    return out


def check(tree: ast.SpecFile, base_dirs: dict[str, Path] | None = None) -> tuple[Spec, list[Diagnostic]]:
    """Check a parsed spec: the checked spec and its warnings, or SpecError with every error."""
    if base_dirs is None:
        base_dirs = {tree.source.path: Path(tree.source.path).resolve().parent}
    checker = _Checker(tree, base_dirs)
    spec = checker.run()
    if checker.params.uses:
        checker.errors = _at_param_uses(checker.errors, checker.params)
    if checker.errors:
        # In source order; diagnostics about `--set` values (another source) come last.
        errors = sorted(checker.errors, key=lambda d: (d.span is None,
                                                       d.span is not None and d.span.source is not tree.source,
                                                       d.span.start if d.span else 0))
        raise SpecError(errors)
    if spec is None:
        raise RuntimeError("check produced no spec and no error")  # a bug in the checker
    return spec, checker.warnings
