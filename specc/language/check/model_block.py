"""Check the model block: its syntax tree and the data block's DataResult -> ModelSpec (specc.language.spec),
nodes with inferred row shapes (the model's type system)."""

from __future__ import annotations

from specc.language import ast, codes
from specc.language.check.data_block import DataResult
from specc.language.check.values import SIGNATURES, Checker, bind_args, kind_of, shape_text, shown
from specc.language.diagnostics import suggest
from specc.language.source import Span
from specc.language.spec import CATEGORIES, CATEGORY, CLASSES, FLOAT, HISTORY, IMPLICIT, Column, ModelSpec, Node, op
from specc.model import ops
from specc.model.ops.base import Arg, Bool, CategoryColumn, Dims, Int, Named, Problem, Real, SetColumn, Size, Tensor
from specc.model.ops.blocks import RESNET_WIDTHS, STEMS, resnet_nodes
from specc.model.sized import with_weights


def check_model(c: Checker, block: ast.Block, data: DataResult) -> ModelSpec | None:
    """The model's nodes, its groups and the input columns it reads; None on an error."""
    # With broken inputs, the columns that did parse are still checked; other names that
    # could be columns pass silently, so that one typo is reported once.
    columns = {col.name: col for col in data.columns}
    if "fill_missing" in data.procs:  # `<name>_na`: missing or not, for each float input
        for col in data.columns:
            if col.kind == FLOAT and not col.shape:
                columns[f"{col.name}_na"] = Column(f"{col.name}_na", CATEGORY, col.span)
    builder = _ModelBuilder(c, columns, data.target, data.procs, lenient=data.inputs_failed, per_user=data.per_user)
    groups, statements = _statements(c, block)
    builder.later = {s.target.id: s.target.span.line for s, _ in statements}
    for stmt, group in statements:
        builder.group = group
        builder.define(stmt)
    if "out" not in builder.defined:
        if not any(isinstance(s, ast.Assign) and s.target.id == "out" for s in block.body):
            c.error(codes.MISSING, "the model block has no 'out'", block.name.span,
                    ["the value named 'out' is the model's prediction"])
        return None
    out = builder.nodes[builder.defined["out"]]
    if data.spec is None:
        return None
    feedback = data.spec.feedback
    scored = feedback.item if feedback is not None and feedback.per_user else None  # every item's score is the output
    # a side table's key is what the exported model takes for the table's columns the model reads
    keys = {data.spec.table(col.table).key for col in data.spec.inputs if col.table and col.name in builder.used_columns}
    for col in data.spec.inputs:
        if col.name not in builder.used_columns and col.name != scored and col.name not in keys:
            c.warn(codes.UNUSED_INPUT, f"input column '{col.name}' is not used by the model", col.span)
    # the columns the model takes (a history column is looked up from its key inside the model)
    used = tuple(col.name for col in data.spec.inputs if col.name in builder.used_columns and col.kind != HISTORY)
    if groups:
        weighted = with_weights(ModelSpec(tuple(builder.nodes.values()), out.name, used))
        for node in builder.nodes.values():
            if node.group == "model" and node.name in weighted:
                c.error(codes.OUTSIDE_GROUPS, f"'{node.name}' has weights but is in no group", node.span,
                        [f"with groups, every layer with weights belongs to one: {', '.join(groups)}"])
    if not builder.ok or c.errors:
        return None
    return ModelSpec(tuple(builder.nodes.values()), out.name, used, tuple(groups) or ("model",))


def _statements(c: Checker, block: ast.Block) -> tuple[list[str], list[tuple[ast.Assign, str]]]:
    """The block's groups in order, and its definitions each with its group ('model' outside any)."""
    groups: list[str] = []
    statements: list[tuple[ast.Assign, str]] = []
    for stmt in block.body:
        if isinstance(stmt, ast.Section) and stmt.kind.id == "group":
            if stmt.name.id in groups:
                c.error(codes.DEFINED_TWICE, f"group '{stmt.name.id}' is defined twice", stmt.name.span)
            groups.append(stmt.name.id)
            for inner in stmt.body:
                if isinstance(inner, ast.Assign):
                    statements.append((inner, stmt.name.id))
                else:
                    c.error(codes.MISPLACED_STATEMENT, "a group holds value definitions, `name = ...`", inner.span)
        elif isinstance(stmt, ast.Assign):
            statements.append((stmt, "model"))
        elif isinstance(stmt, ast.CallStmt):
            c.error(codes.MISPLACED_STATEMENT, "a model statement names its value", stmt.span,
                    [f"write `name = {stmt.call.func.id}(...)`"])
        else:
            kind = stmt.kind if isinstance(stmt, ast.Section) else stmt.name
            c.error(codes.UNKNOWN_SETTING, f"unknown statement '{kind.id}' in the model block", kind.span,
                    suggest(kind.id, ["group"]) or ["the model block defines values, and `group NAME { ... }`"])
    return groups, statements


class _ModelBuilder:
    """Turns model statements into nodes with inferred shapes.

    Every value is a batch of rows; a node's shape is the shape of one row, (40,) for an
    embedding of 40, (28, 28) for an image. `classes` stands for the number of target classes
    until the data is read. The model functions (`embedding(...)`, `linear(...)`, ...) are
    checked by `call_function` below."""

    def __init__(self, c: Checker, columns: dict[str, Column], target: Column | None, procs: tuple[str, ...],
                 lenient: bool, per_user: bool = False):
        self.c = c
        self.per_user = per_user  # implicit feedback of users: `classes` is the number of items
        self.lenient = lenient  # the inputs did not check: unknown names may be columns
        self.columns = columns
        self.target = target
        self.procs = procs
        self.nodes: dict[str, Node] = {}
        self.defined: dict[str, str] = {}  # spec name -> node name
        self.later: dict[str, int] = {}  # every name the block defines -> its line
        self.broken: set[str] = set()  # names whose definition failed: not reported again
        self.used_columns: set[str] = set()
        self.group = "model"
        self.counters: dict[str, int] = {}
        self.reserved: set[str] = set(columns) | {CLASSES}
        self.ok = True

    def define(self, stmt: ast.Assign) -> None:
        """`name = expression`: the expression's nodes, the last one named `name`."""
        name = stmt.target.id
        before = len(self.c.errors)
        if name in self.columns:
            self.c.error(codes.DEFINED_TWICE, f"'{name}' is already an input column", stmt.target.span,
                         ["give the value another name"])
        elif name == CLASSES:
            self.c.error(codes.DEFINED_TWICE, "'classes' is the number of target classes; give the value another "
                         "name", stmt.target.span)
        elif name in self.defined:
            first = self.nodes[self.defined[name]].span
            self.c.error(codes.DEFINED_TWICE, f"'{name}' is defined twice", stmt.target.span,
                         [f"first defined at line {first.line}"])
        else:
            self.reserved.add(name)
            value = self.value(stmt.value, name)
            if isinstance(value, str):
                self.defined[name] = value
            elif value is not None:
                self.c.error(codes.WRONG_KIND, f"'{name}' must be a tensor value, found a constant", stmt.value.span)
            if not isinstance(value, str):
                self.broken.add(name)
        if len(self.c.errors) != before:
            self.ok = False

    def fresh(self, base: str) -> str:
        """A node name not taken yet: `add`, `add_1`, ..."""
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
            return self.add(name, "neg", op("sub", constant=0.0, constant_first=True), (inner,), self.shape(inner),
                            expr.span)
        if isinstance(expr, ast.BinOp):
            return self.binary(expr, name)
        if isinstance(expr, ast.Pipe):
            stage = expr.stage
            if isinstance(stage, ast.Name):
                stage = ast.Call(stage, (), (), stage.span)
            if not isinstance(stage, ast.Call):
                self.c.error(codes.WRONG_KIND, f"after '|>' expected a function, found {kind_of(stage)}", stage.span)
                return None
            return call_function(self, ast.Call(stage.func, (expr.value,) + stage.args, stage.keywords, expr.span),
                                 name)
        if isinstance(expr, ast.Call):
            return call_function(self, expr, name)
        self.c.error(codes.WRONG_KIND, f"expected a model value, found {kind_of(expr)}", expr.span)
        return None

    def reference(self, expr: ast.Name):
        """A name in an expression: a value defined earlier, or a float input column."""
        ident = expr.id
        if ident in self.defined:
            return self.defined[ident]
        if ident in self.columns:
            col = self.columns[ident]
            if col.kind == CATEGORY:
                self.c.error(codes.NOT_A_VALUE, f"'{ident}' is a category column; use it through an embedding",
                             expr.span, [f"e.g. embedding({ident}, 40)"])
                return None
            if col.kind in (CATEGORIES, HISTORY):
                self.c.error(codes.NOT_A_VALUE, f"'{ident}' is a {col.kind} column (a set per row); use it through "
                             "an embedding_bag", expr.span, [f"e.g. embedding_bag({ident}, 40)"])
                return None
            return self.input_node(ident)
        if self.target is not None and ident == self.target.name:
            self.c.error(codes.UNKNOWN_NAME, f"'{ident}' is the target; the model cannot read it", expr.span)
            return None
        if ident == CLASSES:
            self.c.error(codes.NOT_A_VALUE, "'classes' is a size (the number of target classes), not a value",
                         expr.span, ["use it as linear(classes)"])
            return None
        if ident in self.broken or self.lenient:
            self.ok = False  # already reported where it went wrong
            return None
        if ident in self.later:
            self.c.error(codes.UNKNOWN_NAME, f"'{ident}' is used before it is defined (at line "
                         f"{self.later[ident]})", expr.span, ["define values before the lines that use them"])
            return None
        known = set(self.defined) | {c for c, col in self.columns.items() if col.kind != CATEGORY}
        self.c.error(codes.UNKNOWN_NAME, f"unknown name '{ident}'", expr.span,
                     suggest(ident, known | set(self.columns) | set(self.c.params)) or
                     suggest(ident, SIGNATURES["model"]) or
                     ([f"defined so far: {', '.join(sorted(known))}"] if known else []))
        return None

    def input_node(self, column: str) -> str:
        """The node of a float input column, with the procs that apply to it."""
        col = self.columns[column]
        self.used_columns.add(column)
        if column not in self.nodes:
            scalar = not col.shape
            made = op("input", column=column, scale=col.scale, fill=scalar and "fill_missing" in self.procs,
                      normalize=scalar and "normalize" in self.procs, scalar=scalar)
            self.nodes[column] = Node(column, made, (), col.shape or (1,), col.span)
        return column

    def indicator_node(self, column: str) -> str:
        """The node of `<name>_na`, the missing-value indicator of float column `name`."""
        base = column[:-len("_na")]
        self.used_columns.add(base)
        if column not in self.nodes:
            self.nodes[column] = Node(column, op("missing", column=base), (), (), self.columns[column].span)
        return column

    def is_indicator(self, column: str) -> bool:
        base = column[:-len("_na")] if column.endswith("_na") else None
        return base is not None and base in self.columns and self.columns[base].kind == FLOAT and \
            "fill_missing" in self.procs

    def tensor(self, expr: ast.Expr, what: str) -> str | None:
        """An argument that must be a tensor value (not a constant)."""
        value = self.value(expr)
        if isinstance(value, float):
            self.c.error(codes.WRONG_KIND, f"{what}: expected a tensor value, found a number", expr.span)
            return None
        return value

    def flat(self, node: str, what: str, span: Span) -> bool:
        """Layers that mix features want one row of features, not an image."""
        if len(self.shape(node)) != 1:
            self.c.error(codes.SHAPE_MISMATCH, f"{what} needs one row of features, found "
                         f"{shape_text(self.shape(node))}", span,
                         [f"flatten it first: {node} |> flatten |> {what}(...)"])
            return False
        return True

    def binary(self, expr: ast.BinOp, name: str | None):
        """`a + b`, `x * 2`, ...: constants fold; values need equal shapes or one of width 1."""
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
                self.c.error(codes.OUT_OF_RANGE, "division by zero", expr.right.span)
                return None
            made = op(base, constant=const, constant_first=isinstance(left, float))
            return self.add(name, base, made, (tensor,), self.shape(tensor), expr.span)
        sl, sr = self.shape(left), self.shape(right)
        if sl != sr and (1,) not in (sl, sr):
            self.c.error(codes.SHAPE_MISMATCH, f"'{expr.op}' needs equal shapes (or width 1), found "
                         f"{shape_text(sl)} and {shape_text(sr)}", expr.span,
                         [f"'{shown(expr.left)}' has {shape_text(sl)}, '{shown(expr.right)}' has {shape_text(sr)}"])
            return None
        return self.add(name, base, op(base, constant=None, constant_first=False), (left, right),
                        sr if sl == (1,) else sl, expr.span)

    def size(self, expr: ast.Expr, what: str):
        """A layer size: a whole number, or `classes` (the number of items, for implicit feedback of users)."""
        if isinstance(expr, ast.Name) and expr.id == CLASSES:
            if self.target is not None and self.target.kind != CATEGORY and not self.per_user:
                kind = "implicit feedback of interactions" if self.target.kind == IMPLICIT else f"a {self.target.kind}"
                self.c.error(codes.TARGET_KIND, f"'classes' is the number of classes of a category target, but the "
                             f"target '{self.target.name}' is {kind}", expr.span,
                             ["with implicit(user, item, view=users) it is the number of items: the model scores "
                              "every item for a user"] if self.target.kind == IMPLICIT else ())
                return None
            return CLASSES
        return self.c.integer(expr, what, low=1, high=2**24)


# ---------------------------------------------------------------- the model functions
# One call of a model function -> its node, from the op's declaration in specc.model.ops: its signature,
# the bounds of its constants, its shape rule. Blocks (tabular), which take lists and pairs, check
# their own arguments below.


def call_function(b: _ModelBuilder, call: ast.Call, name: str | None):
    """A call of a model function: its node's name, or None on an error."""
    func = call.func.id
    if func not in ops.FUNCTIONS:
        b.c.error(codes.UNKNOWN_FUNCTION, f"unknown function '{func}'", call.func.span,
                  suggest(func, ops.FUNCTIONS) or [f"model functions: {', '.join(ops.FUNCTIONS)}"])
        return None
    signature = SIGNATURES["model"][func]
    if not b.c.args_ok(call, signature):
        return None
    args = bind_args(call, signature)
    if func in BLOCKS:
        return BLOCKS[func](b, call, args, name)
    defn = ops.FUNCTIONS[func]
    values = _values(b, defn, args, func)  # each tensor argument: (param, its nodes, their expressions)
    consts = {f.name: _constant(b, f, args[f.name]) if f.name in args else f.default
              for f in defn.params if isinstance(f, (Real, Int, Dims, Bool, Size, Named))}
    if isinstance(defn.params[0], SetColumn):
        sets = _set_column(b, args[defn.params[0].name], func)
        if sets is None:
            return None
        # a history column is read through its key column; a categories column is read itself, its own items
        key, items = sets.of if sets.kind == HISTORY else (sets.name, sets.name)
        consts.update(column=sets.name, key=key, items=items)
        b.used_columns.update((sets.name, key))
    unset = {f.name for f in defn.params if getattr(f, "optional", False) and f.name not in args}
    column = _column(b, args[defn.params[0].name]) if isinstance(defn.params[0], CategoryColumn) else None
    if defn.validate is not None and all(v is not None for k, v in consts.items() if k not in unset):
        problem = defn.validate(consts)
        if problem is not None:
            first, last = (args[p] for p in (problem.params[0], problem.params[-1]))
            b.c.error(codes.CONFLICT, problem.message, first.span.to(last.span), list(problem.notes))
            return None
    if column is False or any(v is None for k, v in consts.items() if k not in unset) or \
            any(None in nodes for _, nodes, _ in values):
        return None
    if column is not None:
        consts[defn.params[0].name] = column
        if b.lenient and column not in b.columns:
            b.ok = False  # a column that may be one that did not check: go on, to find the other errors
        elif b.is_indicator(column):
            b.indicator_node(column)
        else:
            b.used_columns.add(column)
    for field, nodes, exprs in values:
        for node, expr in zip(nodes, exprs):
            if field.flat and not b.flat(node, func, expr.span if field.many else call.span):
                return None
    inputs = tuple(node for _, nodes, _ in values for node in nodes)
    made = op(func, **consts)
    shape = defn.infer(made, tuple(Arg(node, shown(expr), b.shape(node))
                                   for _, nodes, exprs in values for node, expr in zip(nodes, exprs)))
    if isinstance(shape, Problem):
        b.c.error(codes.SHAPE_MISMATCH, shape.message, call.span, list(shape.notes))
        return None
    return b.add(name, func, made, inputs, shape, call.span)


def _values(b: _ModelBuilder, defn, args: dict, func: str) -> list[tuple[Tensor, list, list]]:
    """The call's tensor arguments, each checked to be a model value."""
    found = []
    for field in defn.params:
        if isinstance(field, Tensor):
            exprs = list(args[field.name]) if field.many else [args[field.name]]
            found.append((field, [b.tensor(e, func) for e in exprs], exprs))
    return found


def _constant(b: _ModelBuilder, field, expr: ast.Expr):
    """A constant argument within its declared bounds (None after reporting why not)."""
    what = getattr(field, "what", None) or field.name
    if isinstance(field, Size):
        return b.size(expr, what)
    if isinstance(field, Int):
        if isinstance(expr, ast.Name) and expr.id in field.names:
            return expr.id
        return b.c.integer(expr, what, low=field.low, high=field.high)
    if isinstance(field, Bool):
        return b.c.boolean(expr, what)
    if isinstance(field, Named):
        if not isinstance(expr, ast.Name) or expr.id not in field.choices:
            b.c.error(codes.UNKNOWN_NAME, f"{what}: expected one of {', '.join(field.choices)}, found {shown(expr)}",
                      expr.span, suggest(expr.id, field.choices) if isinstance(expr, ast.Name) else ())
            return None
        return expr.id
    if isinstance(field, Dims):
        if not isinstance(expr, ast.TupleExpr):
            b.c.error(codes.WRONG_KIND, f"{what}: expected a tuple of sizes, e.g. (1, 28, 28), found {kind_of(expr)}",
                      expr.span)
            return None
        dims = [b.c.integer(item, what, low=1, high=field.high) for item in expr.items]
        return None if None in dims else tuple(dims)
    return b.c.real(expr, what, field.low, field.high, low_open=field.low_open, high_open=field.high_open)


def _column(b: _ModelBuilder, col: ast.Expr):
    """A category column argument: its name, or False after reporting why not."""
    if not isinstance(col, ast.Name):
        b.c.error(codes.WRONG_KIND, f"embedding: expected a category column, found {kind_of(col)}", col.span)
        return False
    if col.id not in b.columns and b.lenient:
        return col.id
    if col.id not in b.columns or b.columns[col.id].kind != CATEGORY:
        cats = [c for c, v in b.columns.items() if v.kind == CATEGORY]
        what = f"a {b.columns[col.id].kind} column" if col.id in b.columns else "not an input column"
        sets = col.id in b.columns and b.columns[col.id].kind in (CATEGORIES, HISTORY)
        b.c.error(codes.UNKNOWN_NAME, f"embedding: '{col.id}' is {what}; expected a category column", col.span,
                  [f"a set of ids per row is read by embedding_bag({col.id}, n)"] if sets else
                  suggest(col.id, cats) or ([f"category columns: {', '.join(cats)}"] if cats else []))
        return False
    return col.id


def _set_column(b: _ModelBuilder, col: ast.Expr, func: str) -> Column | None:
    """A set column argument: a history column (`rated: history(user, item)`) or a categories column (`tags:
    categories(sep="|")`), or None after reporting why not."""
    sets = [c for c, v in b.columns.items() if v.kind in (HISTORY, CATEGORIES)]
    if isinstance(col, ast.Name) and col.id in b.columns and b.columns[col.id].kind in (HISTORY, CATEGORIES):
        return b.columns[col.id]
    if isinstance(col, ast.Name) and col.id not in b.columns and b.lenient:
        b.ok = False
        return None
    what = kind_of(col) if not isinstance(col, ast.Name) else \
        f"the {b.columns[col.id].kind} column '{col.id}'" if col.id in b.columns else f"'{col.id}', not an input column"
    b.c.error(codes.UNKNOWN_NAME, f"{func}: expected a set column (categories or history), found {what}", col.span,
              (suggest(col.id, sets) if isinstance(col, ast.Name) else []) or
              [f"set columns: {', '.join(sets)}" if sets else
               "declare one in the data block's inputs, e.g. tags: categories(sep=\"|\") or "
               "rated: history(user, item)"])
    return None


def _names(b: _ModelBuilder, expr: ast.Expr, what: str) -> list[ast.Name] | None:
    if not isinstance(expr, ast.ListExpr) or not all(isinstance(i, ast.Name) for i in expr.items):
        b.c.error(codes.WRONG_KIND, f"{what}: expected a list of column names, found {shown(expr)}", expr.span)
        return None
    return list(expr.items)


def _tabular_columns(b: _ModelBuilder, call: ast.Call, args: dict) -> tuple[list[ast.Name], list[ast.Name]]:
    """tabular's cats and conts: by default every category input and every (one number per row)
    float input."""
    cats = _names(b, args["cats"], "cats") or [] if "cats" in args else [
        ast.Name(c, call.span) for c, v in b.columns.items() if v.kind == CATEGORY and not b.is_indicator(c)]
    conts = _names(b, args["conts"], "conts") or [] if "conts" in args else [
        ast.Name(c, call.span) for c, v in b.columns.items() if v.kind == FLOAT and not v.shape]
    for item in cats:
        col = b.columns.get(item.id)
        if col is None or col.kind != CATEGORY:
            kinds = [c for c, v in b.columns.items() if v.kind == CATEGORY]
            what = f"a {col.kind} column" if col is not None else "not an input column"
            b.c.error(codes.UNKNOWN_NAME, f"tabular cats: '{item.id}' is {what}", item.span,
                      suggest(item.id, kinds) or [f"category columns: {', '.join(kinds)}"])
    for item in conts:
        col = b.columns.get(item.id)
        if col is None or col.kind != FLOAT or col.shape:
            kinds = [c for c, v in b.columns.items() if v.kind == FLOAT and not v.shape]
            what = f"a {col.kind} column" if col is not None and col.kind != FLOAT else "not a float input column"
            b.c.error(codes.UNKNOWN_NAME, f"tabular conts: '{item.id}' is {what}", item.span,
                      suggest(item.id, kinds) or [f"float columns: {', '.join(kinds)}"])
    return cats, conts


def _emb_sizes(b: _ModelBuilder, value: ast.Expr, cats: list[ast.Name]) -> list[tuple[str, int | None]]:
    """tabular's `emb_sizes=[(column, size), ...]`."""
    sizes: list[tuple[str, int | None]] = []
    items = value.items if isinstance(value, ast.ListExpr) else ()
    if not isinstance(value, ast.ListExpr):
        b.c.error(codes.WRONG_KIND, "emb_sizes: expected a list of (column, size), e.g. [(workclass, 10)]",
                  value.span)
    for item in items:
        if not (isinstance(item, ast.TupleExpr) and len(item.items) == 2 and isinstance(item.items[0], ast.Name)):
            b.c.error(codes.WRONG_KIND, "emb_sizes: expected (column, size)", item.span)
            continue
        column, size = item.items
        if column.id not in [c.id for c in cats]:
            b.c.error(codes.UNKNOWN_NAME, f"emb_sizes: '{column.id}' is not one of the cats", column.span,
                      suggest(column.id, [c.id for c in cats]))
        sizes.append((column.id, b.c.integer(size, "embedding size", low=1, high=2**24)))
    return sizes


def _tabular(b: _ModelBuilder, call: ast.Call, args: dict, name: str | None):
    """fastai's tabular model as one node; specc.model.sized expands it into primitives (specc.model.ops.blocks)."""
    before = len(b.c.errors)
    cats, conts = _tabular_columns(b, call, args)
    layers_expr = args["layers"]
    layers = []
    if not isinstance(layers_expr, ast.ListExpr):
        b.c.error(codes.WRONG_KIND, f"layers: expected a list of sizes, e.g. [200, 100], found {shown(layers_expr)}",
                  layers_expr.span)
    else:
        layers = [b.c.integer(i, "layer size", low=1, high=2**20) for i in layers_expr.items]
    ps: list = [0.0] * len(layers)
    if "ps" in args:
        ps_expr = args["ps"]
        if isinstance(ps_expr, ast.ListExpr):
            if len(ps_expr.items) != len(layers):
                b.c.error(codes.CONFLICT, f"ps: one dropout probability per layer ({len(layers)}), found "
                          f"{len(ps_expr.items)}", ps_expr.span)
            ps = [b.c.real(i, "dropout probability", 0.0, 1.0, high_open=True) for i in ps_expr.items]
        else:  # one for every layer, checked (and reported) once
            ps = [b.c.real(ps_expr, "dropout probability", 0.0, 1.0, high_open=True)] * len(layers)
    emb_drop = b.c.real(args["emb_drop"], "emb_drop", 0.0, 1.0, high_open=True) if "emb_drop" in args else 0.0
    sizes = _emb_sizes(b, args["emb_sizes"], cats) if "emb_sizes" in args else []
    default_out = CLASSES if b.target is not None and b.target.kind == CATEGORY else 1
    out = b.size(args["out"], "tabular's output size") if "out" in args else default_out
    if len(b.c.errors) != before or None in (*layers, *ps, emb_drop, out) or any(s is None for _, s in sizes):
        return None
    if not cats and not conts:
        b.c.error(codes.BAD_ARGUMENTS, "tabular needs some cats or conts", call.span)
        return None
    cat_names = [c.id for c in cats]
    # fill_missing gives each float column a `<name>_na` category; the tabular model embeds it too.
    cat_names += [f"{c.id}_na" for c in conts if b.is_indicator(f"{c.id}_na") and f"{c.id}_na" not in cat_names]
    for column in cat_names:
        if b.is_indicator(column):
            b.indicator_node(column)
        else:
            b.used_columns.add(column)
    for c in conts:
        b.input_node(c.id)
    made = op("tabular", cats=tuple(cat_names), conts=tuple(c.id for c in conts), layers=tuple(layers), ps=tuple(ps),
              emb_drop=emb_drop, emb_sizes=tuple(sizes), out=out)
    return b.add(name, "tabular", made, (), (out,), call.span)


def _sizes_list(b: _ModelBuilder, expr: ast.Expr, what: str, high: int) -> list | None:
    """A list of whole numbers, e.g. layers=[3, 4, 6, 3] (None after reporting why not)."""
    if not isinstance(expr, ast.ListExpr) or not expr.items:
        b.c.error(codes.WRONG_KIND, f"{what}: expected a list of whole numbers, e.g. [3, 4, 6, 3], found "
                  f"{shown(expr)}", expr.span)
        return None
    values = [b.c.integer(item, what, low=1, high=high) for item in expr.items]
    return None if None in values else values


def _resnet(b: _ModelBuilder, call: ast.Call, args: dict, name: str | None):
    """ResNet's body as one node; specc.model.sized expands it into primitives (specc.model.ops.blocks)."""
    x = b.tensor(args["x"], "resnet")
    layers = _sizes_list(b, args["layers"], "layers", 2**10)
    widths = _sizes_list(b, args["widths"], "widths", 2**16) if "widths" in args else \
        list(RESNET_WIDTHS[:len(layers or ())])
    stem = "imagenet"
    if "stem" in args:
        expr = args["stem"]
        stem = expr.id if isinstance(expr, ast.Name) and expr.id in STEMS else None
        if stem is None:
            b.c.error(codes.WRONG_KIND, f"stem: expected one of {', '.join(STEMS)}, found {shown(expr)}", expr.span)
    if layers is not None and widths is not None and len(widths) != len(layers):
        b.c.error(codes.CONFLICT, f"resnet: one width per stage ({len(layers)}), found {len(widths)}",
                  args["widths"].span if "widths" in args else call.span,
                  [] if "widths" in args else [f"the default widths cover 4 stages: {list(RESNET_WIDTHS)}"])
        return None
    if None in (x, layers, widths, stem):
        return None
    made = op("resnet", layers=tuple(layers), widths=tuple(widths), stem=stem)
    probe = Node(name or "resnet", made, (x,), (), call.span, b.group)
    nodes = resnet_nodes(probe, b.shape(x), set())
    if isinstance(nodes, Problem):
        b.c.error(codes.SHAPE_MISMATCH, f"resnet: {nodes.message}", call.span,
                  [*nodes.notes, f"'{shown(args['x'])}' has {shape_text(b.shape(x))}"])
        return None
    return b.add(name, "resnet", made, (x,), nodes[-1].shape, call.span)


BLOCKS = {"tabular": _tabular, "resnet": _resnet}  # blocks check their own arguments: lists and pairs
