"""`specc show SPEC --stage data`: the first rows of a table, or a grid of sample images."""

from __future__ import annotations

import csv
import math

import numpy as np

from specc.data.files import bad_byte, has_surrogates, not_utf8
from specc.data.prepare import read_images, read_npz, read_parquet_split
from specc.data.table import _header, _open
from specc.language.diagnostics import printable
from specc.language.spec import CATEGORY, CsvSource, ImagesSource, ParquetSource, Spec

ROWS = 8


def _csv_head(source: CsvSource, columns, n: int) -> list[list[str]]:
    """The first n rows of the spec's columns, as they are in the file."""
    names = _header(source, columns)  # the file's or the spec's column names, checked against the spec
    index = [names.index(c.name) for c in columns]
    with _open(source) as f:
        reader = csv.reader(f, delimiter=source.delimiter)
        first = next(reader, None)
        rows = [] if source.header or source.columns is None else [first]
        if rows and any(has_surrogates(first[k]) for k in index if k < len(first)):
            raise not_utf8(str(source.path), 1, byte=bad_byte("".join(first[k] for k in index if k < len(first))))
        for row in reader:
            if len(rows) >= n:
                break
            if len(row) == len(names):
                if any(has_surrogates(row[k]) for k in index):  # bytes that are not UTF-8
                    raise not_utf8(str(source.path), reader.line_num, byte=bad_byte("".join(row[k] for k in index)))
                rows.append(row)
        return [[row[k] for k in index] for row in rows[:n]]


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
    """Text about the data, and a PNG grid of images when an input holds images."""
    columns = (*[c for c in spec.data.inputs if c.name in spec.model.inputs], spec.data.target)
    if isinstance(spec.data.source, CsvSource):
        rows = _csv_head(spec.data.source, columns, ROWS)
        text = f"{spec.data.source.path}: the first {len(rows)} rows of the columns the spec reads\n"
        return text + _table([c.name for c in columns], rows), None
    read = read_images if isinstance(spec.data.source, ImagesSource) else \
        read_parquet_split if isinstance(spec.data.source, ParquetSource) else read_npz
    train, valid, path = read(spec.data.source, columns, spec.data.valid)
    n_train, n_valid = len(train[spec.data.target.name]), len(valid[spec.data.target.name])
    lines = [f"{printable(str(path))}: {n_train} training and {n_valid} validation rows"]
    for col in columns:
        arr = train[col.name]
        lines.append(f"  {col.name}: {col.kind}, rows of shape {arr.shape[1:] or '()'} ({arr.dtype}), "
                     f"values {_range(arr, col.kind)}")
    labels = train[spec.data.target.name][:ROWS * 2]
    lines.append(f"first {spec.data.target.name}: {' '.join(printable(str(v)) for v in labels)}")
    png = None
    for col in columns:
        side = image_side(col.shape) if col.kind != CATEGORY else None
        if side is not None:
            from specc.training.plot import image_grid_png

            count = min(36, n_train)
            images = train[col.name][:count]
            # colour images as matplotlib draws them, (height, width, 3); grey ones as (height, width)
            images = images.transpose(0, 2, 3, 1) if col.shape[0] == 3 and len(col.shape) == 3 else \
                images.reshape(count, *side)
            png = image_grid_png(images, [printable(str(v)) for v in train[spec.data.target.name][:count]],
                                 f"{spec.name}: {col.name} ({side[0]} x {side[1]}) with {spec.data.target.name}")
            lines.append(f"a grid of the first {count} '{col.name}' images with their labels"
                         + (f" is in {png_path}" if png_path else " (--png FILE draws it)"))
            break
    return "\n".join(lines), png


def _range(arr: np.ndarray, kind: str) -> str:
    if kind == CATEGORY:
        return f"{len(np.unique(arr))} distinct"
    return f"{arr.min():g} to {arr.max():g}"
