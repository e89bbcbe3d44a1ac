"""`specc show SPEC --stage data`: checked spec -> the first rows of a table as the file has them, or
what each column's arrays hold and a grid of sample images, whichever the source's declaration
(specc.data.sources) gives."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from specc.data.side import whole_table
from specc.data.sources import source_def
from specc.data.sources.base import Head
from specc.data.split import split_columns, valid_file
from specc.language.diagnostics import printable
from specc.language.spec import CATEGORY, Spec, file_columns

ROWS = 8


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def image_side(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """How to draw one row as an image: (28, 28) as is, 784 numbers as 28 x 28, an image of one or
    three channels (channels, height, width) as its height x width."""
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[1:]
    if len(shape) == 1 and shape[0] >= 16 and math.isqrt(shape[0]) ** 2 == shape[0]:
        return (math.isqrt(shape[0]),) * 2
    return None


def preview(spec: Spec, png_path=None) -> tuple[str, bytes | None]:
    """Text about the data, and a PNG grid of images when an input holds images: what the spec's
    source shows of the columns the model reads (its declaration's `preview`)."""
    # what the file gives the model: its inputs (a side table's column not: its key), a history's columns, and
    # implicit feedback's user and item (a model of users reads no item, but its target is made of them)
    read = {*spec.graph_inputs(), *(name for c in spec.data.inputs if c.of for name in c.of)}
    if spec.data.feedback is not None:
        read |= {spec.data.feedback.user, spec.data.feedback.item}
    # implicit feedback's target is made, not read (its rating column, if any, is read in its place)
    columns = file_columns(spec.data.read_columns(tuple(c for c in spec.data.inputs if c.name in read)))
    columns += split_columns(spec.data.valid, columns)  # what the split reads, to pick its rows
    shown = source_def(spec.data.source.kind).preview(spec, columns, ROWS)
    tables = _tables(spec)
    if isinstance(shown, Head):
        text = f"{spec.data.source.path}: the first {len(shown.rows)} rows of the columns the spec reads\n"
        return text + _table([c.name for c in columns], shown.rows) + tables, None
    train, valid, path = shown
    target = columns[-1].name  # the target, or a column of every row where the target is made
    other = valid_file(spec.data.valid)  # file(path): the validation rows are another file's
    counts = f"{len(train[target])} training rows, validation rows in {printable(str(other))}" if other else \
        f"{len(train[target])} training and {len(valid[target])} validation rows"
    lines = [f"{printable(str(path))}: {counts}"]
    for col in columns:
        arr = train[col.name]
        lines.append(f"  {col.name}: {col.kind}, rows of shape {arr.shape[1:] or '()'} ({arr.dtype}), "
                     f"values {_range(arr, col.kind)}")
    lines.append(f"first {target}: {' '.join(printable(str(v)) for v in train[target][:ROWS * 2])}")
    for col in columns:
        side = image_side(col.shape) if col.kind != CATEGORY else None
        if side is not None:
            png, line = _grid(spec, col, side, train, png_path)
            return "\n".join([*lines, line]) + tables, png
    return "\n".join(lines) + tables, None


def _tables(spec: Spec) -> str:
    """The first rows of each side table whose columns the model reads, as its file has them."""
    out = []
    for table in spec.data.tables:
        mine = [c for c in table.columns if c.name in spec.model.inputs]
        if not mine:
            continue
        whole, columns = whole_table(spec.data, table, tuple(mine))
        shown = source_def(table.source.kind).preview(dataclasses.replace(spec, data=whole), columns, ROWS)
        rows = shown.rows if isinstance(shown, Head) else \
            [[str(shown[0][c.name][k]) for c in columns] for k in range(min(ROWS, len(shown[0][table.key])))]
        out.append(f"\ntable {table.name}, {table.source.path}: the first {len(rows)} rows\n"
                   + _table([c.name for c in columns], rows))
    return "".join(out)


def _grid(spec: Spec, col, side: tuple[int, int], train: dict, png_path) -> tuple[bytes, str]:
    """A PNG of the first images of `col` with their labels, and the line that says where it is."""
    from specc.training.plot import image_grid_png

    target = spec.data.target.name
    count = min(36, len(train[target]))
    images = train[col.name][:count]
    # colour images as matplotlib draws them, (height, width, 3); grey ones as (height, width)
    images = images.transpose(0, 2, 3, 1) if col.shape[0] == 3 and len(col.shape) == 3 else \
        images.reshape(count, *side)
    png = image_grid_png(images, [printable(str(v)) for v in train[target][:count]],
                         f"{spec.name}: {col.name} ({side[0]} x {side[1]}) with {target}")
    return png, (f"a grid of the first {count} '{col.name}' images with their labels"
                 + (f" is in {png_path}" if png_path else " (--png FILE draws it)"))


def _range(arr: np.ndarray, kind: str) -> str:
    if kind == CATEGORY:
        return f"{len(np.unique(arr))} distinct"
    return f"{arr.min():g} to {arr.max():g}"
