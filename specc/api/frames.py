"""Frames -> Arrow: what a Python caller hands specc.train or Run.predict (a pandas or polars
DataFrame, a pyarrow Table, anything with the Arrow C stream interface, a dict of arrays) as one
pyarrow Table, so that specc reads it through the Parquet reader's checks (specc.data.parquet)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from specc.language import codes
from specc.language.diagnostics import DataError, UsageError


def frame_name(data) -> str:
    """How messages name a frame: `<pandas DataFrame>`, `<polars DataFrame>`, `<pyarrow Table>`."""
    if isinstance(data, dict):
        return "<dict of arrays>"
    kind = type(data)
    return f"<{kind.__module__.split('.')[0]} {kind.__name__}>"


def is_frame(data) -> bool:
    """Whether `data` is a table in memory rather than a path."""
    return not isinstance(data, (str, Path))


def to_arrow(data):
    """`data` as a pyarrow.Table; a column that Arrow cannot hold (Python objects of mixed types) is a
    DataError naming the frame and the column, a value of another kind a UsageError."""
    import pyarrow as pa

    name = frame_name(data)
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, dict):
        return _from_arrays(data, name)
    if _is_pandas(data):
        return _from_pandas(data, name)
    if hasattr(data, "__arrow_c_stream__"):  # polars, DuckDB, and any frame with the Arrow PyCapsule interface
        try:
            return pa.table(data)
        except (pa.ArrowException, TypeError, ValueError) as err:
            raise DataError(name, f"cannot be read through the Arrow interface: {err}", code=codes.BAD_FRAME) from None
    if hasattr(data, "to_arrow"):  # polars before the PyCapsule interface
        return to_arrow(data.to_arrow())
    raise UsageError(f"data: expected a pandas or polars DataFrame, a pyarrow Table or a dict of numpy arrays, "
                     f"found {type(data).__name__}")


def _is_pandas(data) -> bool:
    kind = type(data)
    return kind.__module__.split(".")[0] == "pandas" and kind.__name__ == "DataFrame"


def _from_pandas(frame, name: str):
    """Column by column, so that a column Arrow refuses is named; the index is left out (a frame's
    row labels are not data)."""
    import pyarrow as pa

    labels = [str(c) for c in frame.columns]
    if len(set(labels)) != len(labels):
        twice = next(c for c in labels if labels.count(c) > 1)
        raise DataError(name, f"has {labels.count(twice)} columns named '{twice}'", code=codes.BAD_FRAME)
    arrays = []
    for label, column in zip(labels, frame.columns):
        try:
            arrays.append(pa.array(frame[column], from_pandas=True))
        except (pa.ArrowException, TypeError, ValueError) as err:
            raise DataError(name, f"cannot be held as one type ({err}): a column holds one kind of value, numbers or "
                            "text", column=label, code=codes.BAD_FRAME) from None
    return pa.table(arrays, names=labels)


def _from_arrays(arrays: dict, name: str):
    """A dict of numpy arrays (one a column, rows first): an array of more than one dimension is a
    column of fixed-size lists, one list of its values a row, as float(N) reads them."""
    import numpy as np
    import pyarrow as pa

    columns, rows = {}, None
    for key, values in arrays.items():
        values = np.asarray(values)
        if values.ndim == 0:
            raise DataError(name, f"holds one value, not an array of rows ({values!r})", column=str(key),
                            code=codes.BAD_FRAME)
        if rows is not None and len(values) != rows:
            raise DataError(name, f"has {len(values)} rows where the columns before it have {rows}",
                            column=str(key), code=codes.BAD_FRAME)
        rows = len(values)
        if values.dtype.kind not in "biufUSO":
            raise DataError(name, f"holds {values.dtype} values; a column holds numbers or text", column=str(key),
                            code=codes.BAD_FRAME)
        try:
            if values.ndim == 1:
                columns[str(key)] = pa.array(values)
            else:
                flat = pa.array(np.ascontiguousarray(values).reshape(-1))
                columns[str(key)] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
        except (pa.ArrowException, TypeError, ValueError) as err:
            raise DataError(name, f"cannot be held as one type ({err})", column=str(key),
                            code=codes.BAD_FRAME) from None
    return pa.table(columns)


def with_frame(spec, data):
    """The checked spec reading `data` in place of its own source: the frame's rows are the rows the
    source would give, split and checked as they would be (specc.data.sources.frame)."""
    from specc.data.sources import source_def
    from specc.data.split import valid_file
    from specc.language.spec import FrameSource

    source = spec.data.source
    if not source_def(source.kind).table or source_def(source.kind).pixels is not None:
        raise UsageError(f"data=: the spec reads a {source.kind}(...) source of images, which a frame cannot stand in "
                         "for; leave data out, and the spec reads its own")
    if valid_file(spec.data.valid) is not None:
        raise UsageError("data=: the spec's validation rows come from a file of their own (valid = file(...)); with a "
                         "frame, choose a split of its rows, e.g. overrides={'data.valid': 'random(0.2, seed=0)'}")
    frame = FrameSource(Path(frame_name(data)), to_arrow(data), source.span)
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, source=frame))
