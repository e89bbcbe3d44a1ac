"""Check the data block: its syntax tree -> DataSpec (specc.language.spec), and a DataResult that tells the
model and train blocks which columns and target did check, even when the rest did not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from specc.data.files import resolved as resolved_path
from specc.language import ast, codes
from specc.language.check.values import COLUMN_TYPES, DATA_SETTINGS, Checker, kind_of, shown
from specc.language.diagnostics import suggest
from specc.language.spec import (
    CATEGORY, FLOAT, Augment, IMAGE_COLUMN, IMAGE_MODES, LABEL_COLUMN, PROCS, Column, CsvSource, DataSpec, ImagesSource,
    LastSplit, NpzSource, ParquetSource, RandomSplit, RowSplit,
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


NO_DATA = DataResult(None)  # a spec without a data block


_EXAMPLES = {"source": 'e.g. source = csv("data/ratings.csv")',
             "inputs": "e.g. inputs = [user: category, item: category]",
             "target": "e.g. target = rating: float"}


def check_data(c: Checker, block: ast.Block) -> DataResult:
    """The data block's settings, each checked; the DataSpec when all of them are right."""
    found = c.settings(block, DATA_SETTINGS).found
    ok = True
    for key in ("source", "inputs", "target"):
        if key not in found:
            c.error(codes.MISSING, f"the data block has no '{key}'", block.name.span, [_EXAMPLES[key]])
            ok = False
    source = _source(c, found["source"].value) if "source" in found else None
    inputs, partial, inputs_failed = _inputs(c, found["inputs"].value) if "inputs" in found else (None, (), True)
    target = _column(c, found["target"].value, "target") if "target" in found else None
    valid = _split(c, found["valid"].value) if "valid" in found else None
    batch = c.integer(found["batch"].value, "batch", low=1) if "batch" in found else 64
    procs = _procs(c, found["procs"].value) if "procs" in found else ()
    keep = _keep_classes(c, found["keep_classes"], target) if "keep_classes" in found else ()
    train_rows = c.integer(found["train_rows"].value, "train_rows", low=1) if "train_rows" in found else 0
    augment = _augment(c, found["augment"].value, inputs) if "augment" in found else None
    # The model block is checked against these even when other data settings are wrong.
    result = DataResult(None, inputs if inputs is not None else partial, inputs_failed, target, procs or ())
    if inputs is not None and target is not None:
        for col in inputs:
            if col.name == target.name:
                c.error(codes.DEFINED_TWICE, f"column '{col.name}' is both an input and the target", target.span)
    if target is not None and target.kind == CATEGORY and target.shape:
        c.error(codes.BAD_COLUMN, "a category target holds one value per row", target.span)
        return result
    if isinstance(source, CsvSource) and inputs is not None and target is not None:
        _csv_columns(c, source, (*inputs, target))
    if isinstance(source, ParquetSource) and source.columns is not None and inputs is not None and target is not None:
        _selected(c, source.columns, (*inputs, target))
    if isinstance(source, ImagesSource) and inputs is not None and target is not None:
        before = len(c.errors)
        fixed = _image_columns(c, source, inputs, target)
        if len(c.errors) > before:  # the model block is checked against the image as the source gives it
            return dataclasses.replace(result, columns=fixed)
    if not ok or None in (source, inputs, target, batch, procs, keep, train_rows) or \
            ("valid" in found and valid is None) or augment is False:
        return result
    spec = DataSpec(source, inputs, target, valid, batch, procs, keep, train_rows or None, augment)
    return DataResult(spec, inputs, inputs_failed, target, procs)


def _csv_columns(c: Checker, source: CsvSource, columns: tuple[Column, ...]) -> None:
    """A CSV column holds one value per row, and is one of the columns the source names."""
    for col in columns:
        if col.shape:
            c.error(codes.BAD_COLUMN, f"column '{col.name}': a CSV column holds one value per row", col.span,
                    ["arrays per row come from npz(...) and parquet(...) sources"])
    if source.columns is not None:
        _selected(c, source.columns, columns)


def _selected(c: Checker, names: tuple[str, ...], columns: tuple[Column, ...]) -> None:
    """Every column the spec reads is one of the source's `columns=[...]`."""
    for col in columns:
        if col.name not in names:
            c.error(codes.UNKNOWN_NAME, f"unknown column '{col.name}'", col.span,
                    suggest(col.name, names) or [f"the source's columns are {', '.join(names)}"])


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


def _source(c: Checker, expr: ast.Expr) -> CsvSource | NpzSource | ImagesSource | ParquetSource | None:
    """csv(...), tsv(...), npz(...), images(...) or parquet(...), its path resolved against the spec's folder."""
    bound = c.bind(expr, "source", "source")
    if bound is None:
        return None
    func, args, call = bound
    path_text = c.string(args["path"], "path")
    span = args["path"].span
    if path_text is not None and ("\x00" in path_text or not path_text.strip()):
        c.error(codes.BAD_TEXT, "path: expected a file name", span)
        return None
    base = c.base_dir(span)
    if func == "npz":
        return None if path_text is None else NpzSource(resolved_path(base / path_text), span)
    if func == "images":
        return _images_source(c, args, None if path_text is None else resolved_path(base / path_text), span)
    if func == "parquet":  # a file, or a folder of files; columns=[...] selects, as pyarrow's and pandas' do
        columns = _column_names(c, args["columns"]) if "columns" in args else None
        if path_text is None or ("columns" in args and columns is None):
            return None
        return ParquetSource(resolved_path(base / path_text), columns, span)
    delimiter = "\t" if func == "tsv" else ","
    if "delimiter" in args:
        delimiter = c.string(args["delimiter"], "delimiter")
        if delimiter is not None and len(delimiter) != 1:
            c.error(codes.BAD_TEXT, f"delimiter must be one character, found {len(delimiter)}",
                    args["delimiter"].span, ['write a tab as "\\t"'])
            delimiter = None
    columns = _column_names(c, args["columns"]) if "columns" in args else None
    header = columns is None
    if "header" in args:
        header = c.boolean(args["header"], "header")
    if header is False and "columns" not in args:
        c.error(codes.BAD_ARGUMENTS, "a source without a header needs columns=[...]", call.span,
                ["e.g. csv(\"u.data\", delimiter=\"\\t\", header=false, columns=[user, item, rating, time])"])
        return None
    missing: tuple[str, ...] | None = ()
    if "missing" in args:
        value = args["missing"]
        items = value.items if isinstance(value, ast.ListExpr) else (value,)
        texts = [c.string(item, "missing") for item in items]
        missing = None if None in texts else tuple(texts)
    strip = c.boolean(args["strip"], "strip") if "strip" in args else False
    if path_text is None or delimiter is None or header is None or ("columns" in args and columns is None) \
            or missing is None or strip is None:
        return None
    return CsvSource(resolved_path(base / path_text), delimiter, header, columns, span, missing, strip)


IMAGE_SIDE_MAX = 8192  # pixels: a larger image is surely a mistake in `size`


def _images_source(c: Checker, args: dict[str, ast.Expr], path, span) -> ImagesSource | None:
    """images(path, size, mode="rgb", skip_broken=false): RGB by default, as torchvision's and
    fastai's image folders are."""
    size = _image_size(c, args["size"])
    mode: str | None = "rgb"
    if "mode" in args:
        mode = c.string(args["mode"], "mode")
        if mode is not None and mode not in IMAGE_MODES:
            lower = mode.lower()
            notes = ([f"did you mean '{lower}'?"] if lower in IMAGE_MODES else
                     ["did you mean 'gray'? (Pillow's \"L\")"] if lower == "l" else list(suggest(lower, IMAGE_MODES)))
            c.error(codes.BAD_TEXT, f'mode must be "gray" or "rgb", found "{mode}"', args["mode"].span,
                    notes or ['"gray": one channel (Pillow\'s "L"); "rgb": three channels'])
            mode = None
    skip = c.boolean(args["skip_broken"], "skip_broken") if "skip_broken" in args else False
    if path is None or size is None or mode is None or skip is None:
        return None
    return ImagesSource(path, size, mode, span, skip)


def _image_size(c: Checker, expr: ast.Expr) -> tuple[int, int] | None:
    """`size=(height, width)`, or one number for a square."""
    if isinstance(expr, ast.TupleExpr) and len(expr.items) == 2:
        height, width = (c.integer(item, what, low=1, high=IMAGE_SIDE_MAX)
                         for item, what in zip(expr.items, ("image height", "image width")))
        return None if height is None or width is None else (height, width)
    if isinstance(expr, (ast.TupleExpr, ast.ListExpr, ast.String)):
        c.error(codes.WRONG_KIND, f"size: expected (height, width), found {shown(expr)}", expr.span,
                ["e.g. size=(28, 28), or size=28 for 28 x 28"])
        return None
    side = c.integer(expr, "image size", low=1, high=IMAGE_SIDE_MAX)
    return None if side is None else (side, side)


def _image_columns(c: Checker, source: ImagesSource, inputs: tuple[Column, ...], target: Column) -> tuple[Column, ...]:
    """An images(...) source gives two columns: `image`, the pixels (channels, height, width), an
    input, and `label`, the class folder's name, the target. The inputs are returned with `image`
    at the source's shape, for the model block to be checked against."""
    shape = source.row_shape
    image = f"{IMAGE_COLUMN}: float({', '.join(str(d) for d in shape)}) / 255"
    label = f"{LABEL_COLUMN}: category"
    declare = f"declare inputs = [{image}] and target = {label}"
    gives = f"images(...) gives two columns: {IMAGE_COLUMN} (the pixels) and {LABEL_COLUMN} (the class folder's name)"
    fixed = []
    for col in inputs:
        if col.name == IMAGE_COLUMN and (col.kind != FLOAT or col.shape != shape):
            found = ("a category" if col.kind == CATEGORY else "one value per row" if not col.shape else
                     f"shape ({', '.join(str(d) for d in col.shape)})")
            channels = f"{shape[0]} channel{'s' if shape[0] > 1 else ''}"
            c.error(codes.BAD_COLUMN, f"column '{IMAGE_COLUMN}' holds images of shape {shape} (mode=\"{source.mode}\": "
                    f"{channels}; size={source.size}), but the spec declares {found}", col.span,
                    [f"declare it as {image}"])
            col = Column(col.name, FLOAT, col.span, shape, col.scale)
        elif col.name == LABEL_COLUMN:
            c.error(codes.BAD_COLUMN, f"column '{LABEL_COLUMN}' is each image's class: it is the target, not an input",
                    col.span, [declare])
        elif col.name != IMAGE_COLUMN:
            c.error(codes.UNKNOWN_NAME, f"unknown column '{col.name}'", col.span,
                    [*suggest(col.name, (IMAGE_COLUMN,)), gives, declare])
        fixed.append(col)
    if target.name == LABEL_COLUMN and target.kind != CATEGORY:
        c.error(codes.BAD_COLUMN, f"column '{LABEL_COLUMN}' holds the class folder names: it is a category",
                target.span, [f"declare it as target = {label}"])
    elif target.name == IMAGE_COLUMN:
        if all(col.name != IMAGE_COLUMN for col in inputs):  # else E103 says it is both
            c.error(codes.BAD_COLUMN, f"column '{IMAGE_COLUMN}' holds the pixels: it is an input, not the target",
                    target.span, [declare])
    elif target.name != LABEL_COLUMN:
        c.error(codes.UNKNOWN_NAME, f"unknown column '{target.name}'", target.span,
                [*suggest(target.name, (LABEL_COLUMN,)), gives, declare])
    return tuple(fixed)


def _column_names(c: Checker, expr: ast.Expr) -> tuple[str, ...] | None:
    if not isinstance(expr, ast.ListExpr) or not expr.items:
        c.error(codes.WRONG_KIND, f"columns: expected a list of column names, found {shown(expr)}", expr.span)
        return None
    names: list[str] = []
    for item in expr.items:
        if isinstance(item, (ast.Name, ast.String)):
            name = item.id if isinstance(item, ast.Name) else item.value
            if name in names:
                c.error(codes.DEFINED_TWICE, f"column '{name}' is named twice", item.span)
            names.append(name)
        else:
            c.error(codes.WRONG_KIND, f"columns: expected a column name, found {kind_of(item)}", item.span)
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
    return good, good, False


def _split(c: Checker, expr: ast.Expr):
    """The validation split: random(fraction, seed), rows(start, end) or last(fraction)."""
    bound = c.bind(expr, "valid", "validation split")
    if bound is None:
        return None
    func, args, _ = bound
    if func == "last":
        fraction = c.real(args["fraction"], "validation fraction", 0.0, 1.0, low_open=True, high_open=True)
        return None if fraction is None else LastSplit(fraction, expr.span)
    if func == "random":
        fraction = c.real(args["fraction"], "validation fraction", 0.0, 1.0, low_open=True, high_open=True)
        seed = c.integer(args["seed"], "seed") if "seed" in args else 0
        return None if fraction is None or seed is None else RandomSplit(fraction, seed, expr.span)
    start = c.integer(args["start"], "first validation row")
    end = c.integer(args["end"], "end row", low=1) if "end" in args else None
    if start is not None and end is not None and end <= start:
        c.error(codes.CONFLICT, f"rows({start}, {end}): the end must come after the start", expr.span)
        return None
    return None if start is None or ("end" in args and end is None) else RowSplit(start, end, expr.span)
