"""pyarrow arrays -> numpy arrays, without the pandas import that pyarrow's own conversion makes."""

from __future__ import annotations

import numpy as np


def as_numpy(values) -> np.ndarray:
    """An int64 or float64 pyarrow Array as a numpy array, a float's nulls as NaN, read from the
    array's own buffer. pyarrow's Array.to_numpy gives the same numbers but imports pandas whenever
    pandas is installed, 0.13-0.2 s of every run that reads a CSV or Parquet file (bench/startup.py)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dtype = np.dtype({pa.int64(): np.int64, pa.float64(): np.float64}[values.type])  # KeyError: a bug
    if len(values) == 0:
        return np.zeros(0, dtype)
    if values.null_count:
        if dtype != np.float64:
            raise ValueError("as_numpy: nulls in a whole-number array have no number")  # callers fill them first
        values = pc.fill_null(values, np.nan)
    return np.frombuffer(values.buffers()[1], dtype, count=len(values), offset=values.offset * dtype.itemsize)
