"""Check the data block: its syntax tree -> DataSpec (specc.language.spec), and a DataResult that tells the
model and train blocks which columns and target did check, even when the rest did not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from specc.data.files import resolved as resolved_path
from specc.data.sources import source_def
from specc.data.sources.base import Char, Choice, Flag, ImageSize, Names, Texts
from specc.language import ast, codes
from specc.language.check.splits import check_split
from specc.language.check.values import COLUMN_TYPES, DATA_SETTINGS, TABLE_SETTINGS, Checker, kind_of, shown
from specc.language.diagnostics import suggest
from specc.language.spec import (
    CATEGORIES, CATEGORY, FLOAT, HISTORY, IMPLICIT, POSITIVE, SAMPLINGS, SET_MAX, SET_MAX_LIMIT, SET_SEP, USERS,
    VIEWS, Augment, PROCS, Column, CsvSource, DataSpec, Implicit, SideTable, file_columns,
)


@dataclass(frozen=True, slots=True)
class DataResult:
    """What the data block hands on. The model block is checked against the columns that did
    check, so one typo in `inputs` is reported once and not again at every use."""

    spec: DataSpec | None  # None: the data block has an error (or is missing)
    columns: tuple[Column, ...] = ()  # the input columns that checked (all of them, when inputs did)
    inputs_failed: bool = False  # some input did not check: an unknown name may be one of them
    target: Column | None = None
    procs: tuple[str, ...] = ()
    per_user: bool = False  # implicit feedback, an example a user: `classes` is the number of items


NO_DATA = DataResult(None)  # a spec without a data block


_EXAMPLES = {"source": 'e.g. source = csv("data/ratings.csv")',
             "inputs": "e.g. inputs = [user: category, item: category]",
             "target": "e.g. target = rating: float"}


def check_data(c: Checker, block: ast.Block) -> DataResult:
    """The data block's settings, each checked; the DataSpec when all of them are right."""
    settings = c.settings(block, DATA_SETTINGS, sections=("table",))
    found = settings.found
    ok = True
    for key in ("source", "inputs", "target"):
        if key not in found:
            c.error(codes.MISSING, f"the data block has no '{key}'", block.name.span, [_EXAMPLES[key]])
            ok = False
    source = _source(c, found["source"].value) if "source" in found else None
    inputs, partial, inputs_failed = _inputs(c, found["inputs"].value) if "inputs" in found else (None, (), True)
    feedback = None
    if "target" in found and _is_implicit(found["target"].value):
        feedback = _implicit(c, found["target"].value, inputs or partial)
        target = Column(POSITIVE, IMPLICIT, feedback.span) if feedback is not None else None
    else:
        target = _column(c, found["target"].value, "target") if "target" in found else None
    tables = _tables(c, [st for st in settings.statements if isinstance(st, ast.Section)], inputs or partial, target)
    if tables:  # their columns are inputs the model may read, made from the key's row of the table
        side = tuple(col for table in tables if table is not None for col in table.columns)
        partial = (*(inputs or partial), *side)
        inputs = None if inputs is None else (*inputs, *side)
    valid = check_split(c, found["valid"].value, inputs, target) if "valid" in found else None
    batch = c.integer(found["batch"].value, "batch", low=1) if "batch" in found else 64
    procs = _procs(c, found["procs"].value) if "procs" in found else ()
    keep = _keep_classes(c, found["keep_classes"], target) if "keep_classes" in found else ()
    train_rows = c.integer(found["train_rows"].value, "train_rows", low=1) if "train_rows" in found else 0
    augment = _augment(c, found["augment"].value, inputs) if "augment" in found else None
    # The model block is checked against these even when other data settings are wrong.
    per_user = feedback is not None and feedback.per_user
    result = DataResult(None, inputs if inputs is not None else partial, inputs_failed, target, procs or (), per_user)
    if inputs is not None and target is not None:
        for col in inputs:
            if col.name == target.name:
                c.error(codes.DEFINED_TWICE, f"column '{col.name}' is both an input and the target", target.span)
    if target is not None and target.kind == CATEGORY and target.shape:
        c.error(codes.BAD_COLUMN, "a category target holds one value per row", target.span)
        return result
    if inputs is not None and target is not None and not _parts_apart(c, inputs, target):
        return result
    if source is not None and inputs is not None and not _separators(c, source, inputs):
        return result
    if source is not None and inputs is not None and target is not None:  # what only the source rules out
        given = _source_columns(c, source, inputs, target, feedback)
        if given is not False:
            return result if given is None else dataclasses.replace(result, columns=given)
    if not ok or None in (source, inputs, target, batch, procs, keep, train_rows, *tables) or \
            ("valid" in found and valid is None) or augment is False:
        return result
    if feedback is not None and (keep or augment):
        c.error(codes.CONFLICT, f"{'keep_classes' if keep else 'augment'} does not apply to implicit feedback",
                found["keep_classes" if keep else "augment"].value.span)
        return result
    spec = DataSpec(source, inputs, target, valid, batch, procs, keep, train_rows or None, augment, feedback,
                    tuple(tables))
    return DataResult(spec, inputs, inputs_failed, target, procs, per_user)


def _source_columns(c: Checker, source, inputs: tuple[Column, ...], target: Column, feedback):
    """What only the source rules out of the columns: False when nothing; else (after reporting) None, or the
    columns the source gives, which the model block is then checked against."""
    if feedback is not None and not source_def(source.kind).table:
        c.error(codes.CONFLICT, f"implicit feedback reads a table of interactions, not {source.kind}(...)",
                feedback.span, ["e.g. source = csv(\"interactions.csv\") with columns user and item"])
        return None
    read = target if feedback is None else _rating(feedback)
    # a history or a table's column is made, not read; a float column of several is read as those columns
    problems, given = source_def(source.kind).columns(source, file_columns(col for col in inputs if not col.made), read)
    c.errors += problems
    return False if not problems or given is None else given


def _tables(c: Checker, sections: list, inputs: tuple[Column, ...], target: Column | None) -> list:
    """Each `table NAME { ... }` section's SideTable (None for one with an error); names and columns are
    each the data's once."""
    tables, taken = [], {col.name: "an input column" for col in inputs}
    if target is not None:
        taken[target.name] = "the target's"
    for section in sections:
        name = section.name.id
        if name in taken or any(t is not None and t.name == name for t in tables):
            c.error(codes.DEFINED_TWICE, f"table '{name}' is declared twice" if name not in taken else
                    f"table '{name}': the name is already {taken[name]}", section.name.span)
            tables.append(None)
            continue
        table = _table(c, section, inputs, taken)
        if table is not None:
            taken.update({col.name: f"a column of table '{name}'" for col in table.columns})
        tables.append(table)
    return tables


def _table(c: Checker, section: ast.Section, inputs: tuple[Column, ...], taken: dict[str, str]) -> SideTable | None:
    """`table users { source = csv("users.csv"), key = user, columns = [age: float(fill=30), job: category] }`:
    a file read whole, one row per key; the key a category input of the data; the columns new names."""
    name = section.name.id
    block = ast.Block(ast.Name(f"table '{name}'", section.kind.span), section.body, section.span)
    found = c.settings(block, TABLE_SETTINGS, body=section.body).found
    missing = [key for key in TABLE_SETTINGS if key not in found]
    for key in missing:
        c.error(codes.MISSING, f"table '{name}' has no '{key}'", section.name.span,
                [{"source": 'e.g. source = csv("data/users.csv"): one row per key',
                  "key": "e.g. key = user: a category input of the data, and the table's column of that name",
                  "columns": "e.g. columns = [age: float(fill=30), occupation: category]"}[key]])
    source = _source(c, found["source"].value) if "source" in found else None
    if source is not None and not source_def(source.kind).table:
        c.error(codes.CONFLICT, f"table '{name}' reads a table of rows, not {source.kind}(...)",
                found["source"].value.span, ['e.g. source = csv("data/users.csv")'])
        source = None
    key = _table_key(c, found["key"].value, inputs) if "key" in found else None
    columns = _table_columns(c, found["columns"].value, name, taken, key) if "columns" in found else None
    if missing or source is None or key is None or columns is None:
        return None
    cols, fill = columns
    if not _separators(c, source, cols):
        return None
    problems, _ = source_def(source.kind).columns(source, file_columns((key, *cols)), None)
    c.errors += problems
    if problems:
        return None
    return SideTable(name, source, key.name, cols, section.span, fill)


def _table_key(c: Checker, expr: ast.Expr, inputs: tuple[Column, ...]) -> Column | None:
    """A table's key: a category input of the data (read from the table's column of the same name)."""
    columns = {col.name: col for col in inputs}
    if not isinstance(expr, ast.Name):
        c.error(codes.WRONG_KIND, f"key: expected a column name, found {kind_of(expr)}", expr.span)
        return None
    col = columns.get(expr.id)
    if col is None or col.kind != CATEGORY or col.made:
        c.error(codes.BAD_COLUMN, f"a table's key '{expr.id}' must be a category input of the data", expr.span,
                suggest(expr.id, [n for n, v in columns.items() if v.kind == CATEGORY and not v.made]) or
                ["e.g. inputs = [user: category, ...] and key = user"])
        return None
    return Column(col.name, CATEGORY, expr.span)


TABLE_COLUMNS = "a table's columns"  # what _column reads: a table's `columns = [...]`


def _table_columns(c: Checker, expr: ast.Expr, table: str, taken: dict[str, str],
                   key: Column | None) -> tuple[tuple[Column, ...], tuple] | None:
    """A table's `columns = [...]`: each `name: type`, a float's or a category's `fill=` value taken out
    (for a key missing from the table); each a name of its own."""
    if not isinstance(expr, ast.ListExpr) or not expr.items:
        c.error(codes.BAD_COLUMN, f"columns: expected a list of `column: type`, found {shown(expr)}", expr.span,
                ["e.g. columns = [age: float(fill=30), occupation: category]"])
        return None
    cols, fill, ok = [], [], True
    for item in expr.items:
        fill_expr = None
        if isinstance(item, ast.Typed) and isinstance(item.type, ast.Call):
            kept = tuple(k for k in item.type.keywords if k.name.id != "fill")
            fill_expr = next((k.value for k in item.type.keywords if k.name.id == "fill"), None)
            if fill_expr is not None:
                call = item.type
                bare = call.func if not call.args and not kept else dataclasses.replace(call, keywords=kept)
                item = dataclasses.replace(item, type=bare)
        col = _column(c, item, TABLE_COLUMNS)
        if col is None:
            ok = False
            continue
        if col.made or col.kind not in (CATEGORY, FLOAT, CATEGORIES):
            c.error(codes.BAD_COLUMN, f"a table's column is a category, a float or a set of categories, found "
                    f"'{col.name}: {col.kind}'", col.span)
            ok = False
            continue
        clash = "the table's key" if key is not None and col.name == key.name else taken.get(col.name)
        if clash is None and any(col.name == other.name for other in cols):
            clash = "another of its columns"
        if clash is not None:
            c.error(codes.DEFINED_TWICE, f"column '{col.name}' of table '{table}' is already {clash}", col.span,
                    ["give it another name in the table's source, e.g. csv(..., columns=[...])"])
            ok = False
            continue
        if fill_expr is not None:
            value = _fill(c, fill_expr, col)
            if value is None:
                ok = False
                continue
            fill.append((col.name, value))
        cols.append(dataclasses.replace(col, table=table))
    return (tuple(cols), tuple(fill)) if ok else None


def _fill(c: Checker, expr: ast.Expr, col: Column) -> float | str | None:
    """A column's fill for a key missing from its table: a number for a float, a category's value as text (a
    set's is the empty set, and none other)."""
    if col.kind == FLOAT:
        return c.real(expr, "fill")
    if col.kind == CATEGORIES:
        c.error(codes.BAD_ARGUMENTS, f"fill of set column '{col.name}': a key missing from the table has the empty "
                "set, and no other fill", expr.span, [f"e.g. {col.name}: categories(sep=\"{col.sep}\")"])
        return None
    if isinstance(expr, ast.String):
        return expr.value
    if isinstance(expr, ast.Number) and float(expr.value).is_integer():
        return str(int(expr.value))
    c.error(codes.WRONG_KIND, f"fill of category '{col.name}': expected a category's value, found {shown(expr)}",
            expr.span, ['e.g. fill="other", or a whole number'])
    return None


def _is_implicit(expr: ast.Expr) -> bool:
    return isinstance(expr, ast.Call) and expr.func.id == "implicit" or isinstance(expr, ast.Name) and \
        expr.id == "implicit"


def _implicit(c: Checker, expr: ast.Expr, inputs) -> Implicit | None:
    """`target = implicit(user, item, negatives=4, sampling=uniform, top_k=10, rating=r, threshold=4,
    view=interactions)`: the user and item are category inputs; a rating column and its threshold come
    together; a view of users draws no negatives."""
    bound = c.bind(expr, "target", "target")
    if bound is None:
        return None
    _, args, call = bound
    columns = {col.name: col for col in inputs}
    names = {}
    for role in ("user", "item", "rating"):
        if role not in args:
            continue
        arg = args[role]
        if not isinstance(arg, ast.Name):
            c.error(codes.WRONG_KIND, f"implicit's {role}: expected a column name, found {kind_of(arg)}", arg.span)
            return None
        names[role] = arg.id
        if role != "rating" and (arg.id not in columns or columns[arg.id].kind != CATEGORY):
            c.error(codes.BAD_COLUMN, f"implicit's {role} '{arg.id}' must be a category input", arg.span,
                    suggest(arg.id, columns) or [f"e.g. inputs = [user: category, item: category]"])
            return None
    if names["user"] == names["item"]:
        c.error(codes.CONFLICT, "implicit: the user and the item are the same column", args["item"].span)
        return None
    view = _one_of(c, args.get("view"), "view", VIEWS)
    if view == USERS:  # the model scores every item for a user: no pair is drawn
        for drawn in ("negatives", "sampling"):
            if drawn in args:
                c.error(codes.CONFLICT, f"implicit(..., view=users) draws no negatives: its '{drawn}' does not "
                        "apply", args[drawn].span, ["an example is a user, its items the target; the loss compares "
                                                    "the model's score of every item with them"])
                return None
    negatives = c.integer(args["negatives"], "negatives", low=0, high=1000) if "negatives" in args else \
        (0 if view == USERS else 1)
    top_k = c.integer(args["top_k"], "top_k", low=1, high=10000) if "top_k" in args else 10
    sampling = _one_of(c, args.get("sampling"), "sampling", SAMPLINGS)
    threshold = c.real(args["threshold"], "threshold") if "threshold" in args else None
    if ("rating" in args) != ("threshold" in args):
        c.error(codes.CONFLICT, "implicit: a rating column and its threshold come together", call.span,
                ["e.g. implicit(user, item, rating=rating, threshold=4): rows rated 4 or more are interactions"])
        return None
    if None in (negatives, top_k, sampling, view) or ("threshold" in args and threshold is None):
        return None
    return Implicit(names["user"], names["item"], negatives, sampling, top_k, call.span, names.get("rating"),
                    threshold, view)


def _rating(feedback: Implicit) -> Column | None:
    """The column implicit feedback reads beside the inputs: its rating column, if it has one."""
    return None if feedback.rating is None else Column(feedback.rating, FLOAT, feedback.span)


def _one_of(c: Checker, expr: ast.Expr | None, what: str, names: tuple[str, ...]) -> str | None:
    """One of a few bare names (implicit's sampling, view): the first when not given."""
    if expr is None:
        return names[0]
    if not isinstance(expr, ast.Name) or expr.id not in names:
        c.error(codes.UNKNOWN_NAME, f"{what}: expected one of {', '.join(names)}, found {shown(expr)}",
                expr.span, suggest(expr.id, names) if isinstance(expr, ast.Name) else ())
        return None
    return expr.id


def _augment(c: Checker, expr: ast.Expr, inputs) -> Augment | bool:
    """`augment = [flip, crop(4)]`: the Augment, or False after reporting why not."""
    items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
    flip, crop, ok = False, 0, True
    for item in items:
        bound = c.bind(item, "augment", "augmentation")
        if bound is None:
            ok = False
            continue
        func, args, call = bound
        if func == "flip":
            flip = True
        else:
            padding = c.integer(args["padding"], "crop's padding", low=1, high=2**10)
            ok, crop = ok and padding is not None, padding or 0
    images = [col for col in inputs or () if len(col.shape) == 3]
    if inputs is not None and not images:
        c.error(codes.CONFLICT, "augment changes images, but no input is an image (channels, height, width)",
                expr.span, ["declare the image column as float(C, H, W), e.g. float(1, 28, 28)"])
        return False
    return Augment(flip, crop, expr.span) if ok else False


def _keep_classes(c: Checker, stmt: ast.Assign, target: Column | None) -> tuple[str, ...] | None:
    """`keep_classes = [0, 1, 2]`: the class values to keep, as the data file writes them."""
    value = stmt.value
    items = value.items if isinstance(value, ast.ListExpr) else ()
    keep: tuple | None
    if not items:
        c.error(codes.WRONG_KIND, "keep_classes: expected a list of class values, e.g. [0, 1, 2]", value.span)
        keep = None
    else:
        keep = tuple(str(i.value) if isinstance(i, (ast.Number, ast.String)) else None for i in items)
        if None in keep:
            c.error(codes.WRONG_KIND, "keep_classes: expected numbers or strings", value.span)
            keep = None
    if target is not None and target.kind != CATEGORY:
        c.error(codes.TARGET_KIND, "keep_classes needs a category target", stmt.target.span)
        keep = None
    return keep


def _procs(c: Checker, expr: ast.Expr) -> tuple[str, ...] | None:
    items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
    names: list[str] = []
    for item in items:
        if not isinstance(item, ast.Name) or item.id not in PROCS:
            name = item.id if isinstance(item, ast.Name) else shown(item)
            c.error(codes.UNKNOWN_FUNCTION, f"unknown proc '{name}'", item.span,
                    suggest(name, PROCS) or [f"procs: {', '.join(PROCS)}"])
            return None
        if item.id in names:
            c.error(codes.DEFINED_TWICE, f"proc '{item.id}' is listed twice", item.span)
            return None
        names.append(item.id)
    return tuple(names)


def _source(c: Checker, expr: ast.Expr):
    """A source call bound against its declaration (specc.data.sources): each argument checked as its
    field says, defaults filled in, the path resolved against the spec's folder; None on an error."""
    bound = c.bind(expr, "source", "source")
    if bound is None:
        return None
    func, args, call = bound
    defn = source_def(func)
    path_text = c.string(args["path"], "path")
    span = args["path"].span
    if path_text is not None and ("\x00" in path_text or not path_text.strip()):
        c.error(codes.BAD_TEXT, "path: expected a file name", span)
        return None  # nothing else is checked of a source with no file
    before = len(c.errors)
    values = {f.name: _argument(c, f, args[f.name]) if f.name in args else f.default for f in defn.params[1:]}
    problem = defn.validate(values, set(args))
    if problem is not None:
        c.error(codes.BAD_ARGUMENTS, problem.message, call.span, problem.notes)
    if path_text is None or len(c.errors) > before:
        return None
    return defn.make(resolved_path(c.base_dir(span) / path_text), values, span)


def _argument(c: Checker, field, expr: ast.Expr):
    """One argument of a source as its declared field reads it (None after reporting why not)."""
    if isinstance(field, Char):
        text = c.string(expr, field.name)
        if text is not None and len(text) != 1:
            c.error(codes.BAD_TEXT, f"{field.name} must be one character, found {len(text)}", expr.span,
                    ['write a tab as "\\t"'])
            return None
        return text
    if isinstance(field, Flag):
        return c.boolean(expr, field.name)
    if isinstance(field, Names):
        return _column_names(c, expr, field.name)
    if isinstance(field, Texts):
        texts = [c.string(item, field.name) for item in (expr.items if isinstance(expr, ast.ListExpr) else (expr,))]
        return None if None in texts else tuple(texts)
    if isinstance(field, Choice):
        return _choice(c, field, expr)
    if isinstance(field, ImageSize):
        return _image_size(c, field, expr)
    raise TypeError(f"no reader for the source field {field!r}")  # a bug: a field kind the checker lacks


def _choice(c: Checker, field: Choice, expr: ast.Expr) -> str | None:
    """One of the field's choices, written as a string; a note for what was likely meant."""
    value = c.string(expr, field.name)
    if value is None or value in field.choices:
        return value
    lower = value.lower()
    alias = field.aliases.get(lower)
    notes = ([f"did you mean '{lower}'?"] if lower in field.choices else
             [f"did you mean '{alias[0]}'? ({alias[1]})"] if alias else list(suggest(lower, field.choices)))
    choices = " or ".join(f'"{k}"' for k in field.choices)
    c.error(codes.BAD_TEXT, f'{field.name} must be {choices}, found "{value}"', expr.span,
            notes or ["; ".join(f'"{k}": {v}' for k, v in field.choices.items())])
    return None


def _image_size(c: Checker, field: ImageSize, expr: ast.Expr) -> tuple[int, int] | None:
    """`size=(height, width)`, or one number for a square."""
    if isinstance(expr, ast.TupleExpr) and len(expr.items) == 2:
        height, width = (c.integer(item, what, low=1, high=field.high)
                         for item, what in zip(expr.items, ("image height", "image width")))
        return None if height is None or width is None else (height, width)
    if isinstance(expr, (ast.TupleExpr, ast.ListExpr, ast.String)):
        c.error(codes.WRONG_KIND, f"{field.name}: expected (height, width), found {shown(expr)}", expr.span,
                [f"e.g. {field.name}=(28, 28), or {field.name}=28 for 28 x 28"])
        return None
    side = c.integer(expr, "image size", low=1, high=field.high)
    return None if side is None else (side, side)


def _column_names(c: Checker, expr: ast.Expr, what: str) -> tuple[str, ...] | None:
    if not isinstance(expr, ast.ListExpr) or not expr.items:
        c.error(codes.WRONG_KIND, f"{what}: expected a list of column names, found {shown(expr)}", expr.span)
        return None
    names: list[str] = []
    for item in expr.items:
        if isinstance(item, (ast.Name, ast.String)):
            name = item.id if isinstance(item, ast.Name) else item.value
            if name in names:
                c.error(codes.DEFINED_TWICE, f"column '{name}' is named twice", item.span)
            names.append(name)
        else:
            c.error(codes.WRONG_KIND, f"{what}: expected a column name, found {kind_of(item)}", item.span)
            return None
    return tuple(names)


def _column(c: Checker, expr: ast.Expr, what: str) -> Column | None:
    """`name: type`, `pixels: float(28, 28)`, optionally scaled: `pixels: float(784) / 255`."""
    scale = None
    if isinstance(expr, ast.BinOp) and isinstance(expr.left, ast.Typed) and expr.op in ("*", "/"):
        factor = c.real(expr.right, "scale", 0.0, low_open=True)
        if factor is None:
            return None
        scale = factor if expr.op == "*" else 1.0 / factor
        whole, expr = expr, expr.left
    else:
        whole = expr
    if not isinstance(expr, ast.Typed):
        example = "rating: float" if what == "target" else "user: category"
        name = f"{expr.id}: ..." if isinstance(expr, ast.Name) else example
        c.error(codes.BAD_COLUMN, f"{what}: expected `column: type`, found {kind_of(expr)}", expr.span,
                [f"e.g. {name}; the types are {', '.join(COLUMN_TYPES)}"])
        return None
    type_name = expr.type if isinstance(expr.type, ast.Name) else expr.type.func
    kind = type_name.id
    if kind == HISTORY and what == "inputs" and scale is None:
        return _history(c, expr)
    if kind == CATEGORIES:
        if what not in ("inputs", TABLE_COLUMNS) or scale is not None:
            c.error(codes.BAD_COLUMN, f"a categories column (a set of ids per row) is an input or a table's column, "
                    f"{'not the target' if scale is None else 'never scaled'}", whole.span,
                    ["e.g. inputs = [user: category, tags: categories(sep=\"|\")]"] if scale is None else [])
            return None
        return _categories(c, expr)
    if kind == FLOAT and isinstance(expr.type, ast.Call) and expr.type.keywords:
        return _float_of_columns(c, expr, whole, scale, what)
    if kind not in COLUMN_TYPES:
        c.error(codes.BAD_COLUMN, f"unknown column type '{kind}'", type_name.span,
                suggest(kind, COLUMN_TYPES) or [f"the types are {', '.join(COLUMN_TYPES)}"])
        return None
    shape: tuple[int, ...] = ()
    if isinstance(expr.type, ast.Call):
        call = expr.type
        if kind != FLOAT or call.keywords or not call.args:
            c.error(codes.BAD_COLUMN, "only float columns take a shape, as in float(784) or float(28, 28)",
                    call.span)
            return None
        dims = [c.integer(a, "a column's size", low=1, high=2**24) for a in call.args]
        if None in dims:
            return None
        shape = tuple(dims)
    if scale is not None and kind != FLOAT:
        c.error(codes.BAD_COLUMN, "only float columns can be scaled", whole.span)
        return None
    return Column(expr.name.id, kind, whole.span, shape, scale)


def _categories(c: Checker, expr: ast.Typed) -> Column | None:
    """`tags: categories(sep="|", max_size=256)`: a set of ids per row, ids split at `sep` in a text field."""
    sep, max_size = SET_SEP, SET_MAX
    call = expr.type
    if isinstance(call, ast.Call):
        if call.args:
            c.error(codes.BAD_ARGUMENTS, "categories takes its arguments by name: sep and max_size", call.args[0].span,
                    ['e.g. tags: categories(sep="|", max_size=64)'])
            return None
        for kw in call.keywords:
            key = kw.name.id
            if key == "sep":
                sep = c.string(kw.value, "sep")
                if sep is not None and len(sep) != 1:
                    c.error(codes.BAD_TEXT, f"sep must be one character, found {len(sep)} ('{sep}')", kw.value.span,
                            ['e.g. categories(sep="|"), or sep=";"'])
                    return None
            elif key == "max_size":
                max_size = c.integer(kw.value, "max_size", low=1, high=SET_MAX_LIMIT)
            else:
                c.error(codes.BAD_ARGUMENTS, f"categories has no argument '{key}'", kw.name.span,
                        suggest(key, ("sep", "max_size")) or ["categories takes sep and max_size"])
                return None
        if sep is None or max_size is None:
            return None
    return Column(expr.name.id, CATEGORIES, expr.span, sep=sep, max_size=max_size)


def _float_of_columns(c: Checker, expr: ast.Typed, whole: ast.Expr, scale: float | None, what: str) -> Column | None:
    """`genres: float(columns=[action, drama])`: one float vector a row, read from those scalar columns."""
    call = expr.type
    keys = [kw.name.id for kw in call.keywords]
    if call.args or keys != ["columns"]:
        bad = call.args[0].span if call.args else next(kw.name.span for kw in call.keywords if kw.name.id != "columns")
        c.error(codes.BAD_ARGUMENTS, "float takes a shape, as in float(784), or columns=[...] alone", bad,
                ["e.g. genres: float(columns=[action, comedy, drama])"] +
                (list(suggest(keys[0], ("columns",))) if keys != ["columns"] and keys else []))
        return None
    if what == "target":
        c.error(codes.BAD_COLUMN, "float(columns=[...]) is an input's: the target is one column of the file",
                call.span)
        return None
    value = call.keywords[0].value
    if isinstance(value, ast.ListExpr) and not value.items:
        c.error(codes.WRONG_KIND, "columns: expected a list of column names, found an empty list", value.span,
                ["e.g. float(columns=[action, comedy, drama])"])
        return None
    names = _column_names(c, value, "columns")
    if names is None or len(set(names)) != len(names):
        return None  # reported
    return Column(expr.name.id, FLOAT, whole.span, (len(names),), scale, parts=names)


def _parts_apart(c: Checker, inputs: tuple[Column, ...], target: Column) -> bool:
    """A column a float(columns=[...]) reads is read for it alone: no other input, nor the target, nor a column
    another such float reads."""
    others = {col.name: "an input" for col in inputs}
    others[target.name] = "the target"
    ok, taken = True, {}
    for col in inputs:
        for part in col.parts:
            if part in taken or (part in others and part != col.name):
                role = f"read by '{taken[part]}' too" if part in taken else f"{others[part]} too"
                c.error(codes.CONFLICT, f"column '{part}' of float(columns=[...]) is {role}", col.span,
                        ["each column of the file is read once: as an input, the target, or one number of a vector"])
                ok = False
            taken[part] = col.name
    return ok


def _separators(c: Checker, source, inputs: tuple[Column, ...]) -> bool:
    """A set's separator is not the delimiter of the text file it is read from (a field could not hold one)."""
    ok = True
    for col in inputs:
        if col.kind == CATEGORIES and isinstance(source, CsvSource) and col.sep == source.delimiter:
            shown_sep = "\\t" if col.sep == "\t" else col.sep
            c.error(codes.CONFLICT, f"the set separator '{shown_sep}' of '{col.name}' is the file's delimiter; a field "
                    "could not hold a set", col.span, ['e.g. categories(sep="|") in a comma-separated file'])
            ok = False
    return ok


def _history(c: Checker, expr: ast.Typed) -> Column | None:
    """`rated: history(user, item)`: for each row, the items (`item`'s categories) its `user` has in the
    training rows. The two are category inputs (checked with the others: _histories)."""
    call = expr.type
    if not isinstance(call, ast.Call) or len(call.args) != 2 or call.keywords or \
            not all(isinstance(a, ast.Name) for a in call.args):
        c.error(codes.BAD_COLUMN, "history: expected two category columns, the key and its items", expr.span,
                ["e.g. rated: history(user, item): the items each user has in the training rows"])
        return None
    key, items = (a.id for a in call.args)
    return Column(expr.name.id, HISTORY, expr.span, of=(key, items))


def _histories(c: Checker, columns: tuple[Column, ...]) -> bool:
    """Every history column's key and items are two category inputs of the data block."""
    kinds = {col.name: col.kind for col in columns}
    ok = True
    for col in columns:
        if col.kind != HISTORY:
            continue
        for role, name in zip(("key", "items"), col.of):
            if kinds.get(name) != CATEGORY:
                found = "not an input" if name not in kinds else f"a {kinds[name]} column"
                c.error(codes.BAD_COLUMN, f"history's {role} '{name}' is {found}; expected a category input", col.span,
                        suggest(name, [n for n, k in kinds.items() if k == CATEGORY]) or
                        ["e.g. inputs = [user: category, item: category, rated: history(user, item)]"])
                ok = False
        if ok and col.of[0] == col.of[1]:
            c.error(codes.CONFLICT, "history: the key and its items are the same column", col.span)
            ok = False
    return ok


def _inputs(c: Checker, expr: ast.Expr) -> tuple[tuple[Column, ...] | None, tuple[Column, ...], bool]:
    """`inputs = [...]`: (the columns or None, the columns that did check, whether one failed)."""
    if not isinstance(expr, ast.ListExpr) or not expr.items:
        c.error(codes.BAD_COLUMN, f"inputs: expected a list of `column: type`, found {shown(expr)}", expr.span,
                ["e.g. inputs = [user: category, item: category]"])
        return None, (), False
    cols = [_column(c, item, "inputs") for item in expr.items]
    good = tuple(col for col in cols if col is not None)
    if len(good) != len(cols):
        return None, good, True
    seen: dict[str, Column] = {}
    for col in good:
        if col.name in seen:
            first = seen[col.name].span
            where = "earlier on this line" if first.line == col.span.line else f"at line {first.line}"
            c.error(codes.DEFINED_TWICE, f"input column '{col.name}' is declared twice", col.span,
                    [f"first declared {where}"])
        seen[col.name] = col
    if not _histories(c, good):
        return None, good, True
    return good, good, False
