"""The frame source: a table in memory that a Python caller gives specc.train in place of the spec's
source (specc.api.frames makes it an Arrow table), read through the Parquet reader's own checks
(specc.data.parquet.read_arrow), so that a frame and a file of the same columns train alike."""

from __future__ import annotations

from specc.data.sources.base import FilePath, SourceDef
from specc.language.spec import FrameSource


def _make(path, args: dict, span) -> FrameSource:
    raise TypeError("a frame source is made by specc.api.frames, never from a spec")  # MADE, not SOURCES


def _read(data, wanted) -> tuple[dict, dict, str]:
    from specc.data.parquet import read_arrow
    from specc.data.split import table_rows

    return table_rows(data, wanted, read_arrow(data.source, wanted))


def _preview(spec, columns: tuple, n: int) -> tuple[dict, dict, str]:
    from specc.data.parquet import read_arrow
    from specc.data.split import split_table

    return split_table(read_arrow(spec.data.source, columns), columns, spec.data.valid)


def _reading(source: FrameSource) -> dict:
    # typed columns, as Parquet's: the model reads a Parquet file or an .npz by its bytes, else text
    # with a header (specc.inference.infer.reader_for)
    return {"format": "parquet"}


def _reader(path, session, ask):
    from specc.inference.read_parquet import read_parquet_rows

    return read_parquet_rows(path, session, ask)


def _recognises(path) -> bool:
    return False  # not None: a model trained on a frame reads a CSV as text with a header


SOURCE = SourceDef("frame", "a table handed to specc.train (pandas, polars, pyarrow, a dict of arrays)", (FilePath(),),
                   make=_make, read=_read, preview=_preview, reading=_reading, reader=_reader, recognises=_recognises)
