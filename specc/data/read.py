"""Reading a data spec's rows: its source's declaration (specc.data.sources) reads the columns a
stage wants, and the columns its `valid` split reads too, and splits them as the split's
declaration (specc.data.splits) picks; a split that brings a file of its own (`file(path)`) has
that file read as the source reads its own, for the validation rows."""

from __future__ import annotations

import dataclasses

import numpy as np

from specc.data.files import shown_path
from specc.data.sources import source_def
from specc.data.split import split_columns, valid_file
from specc.language import codes
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import DataSpec, file_columns


def read_rows(data: DataSpec, wanted: tuple) -> tuple[dict, dict, str]:
    """The wanted columns' training and validation rows as read (the columns read for the split
    alone left out), and the path of the file they came from. A float column of several columns
    (`float(columns=[...])`) is read as those, then stacked: (rows, number of columns)."""
    read = source_def(data.source.kind).read
    columns = file_columns(wanted)
    train, valid, path = read(data, (*columns, *split_columns(data.valid, columns)))
    other = valid_file(data.valid)
    if other is not None:
        valid = _valid_file_rows(data, columns, other, path)
    return stacked(train, wanted), stacked(valid, wanted), path


def stacked(rows: dict, wanted: tuple) -> dict:
    """The wanted columns of the rows as read, each float column of several made of its columns, side by side."""
    return {col.name: np.stack([np.asarray(rows[p], dtype=np.float64) for p in col.parts], axis=1)
            if col.parts else rows[col.name] for col in wanted}


def _valid_file_rows(data: DataSpec, wanted: tuple, other, path: str) -> dict:
    """Every row of the split's validation file, read as the source reads its own file (a path that
    is no regular file is E208 at the split in the spec). A column the spec reads that the file
    lacks is D128, naming the file: the training file has it."""
    source = dataclasses.replace(data.source, path=other, span=data.valid.span)
    try:
        rows, _, _ = source_def(source.kind).read(dataclasses.replace(data, source=source), wanted)
    except SpecError as err:
        lacking = [col.name for col in wanted if any(d.code is codes.NOT_IN_DATA and d.span == col.span
                                                     for d in err.diagnostics)]
        if not lacking:
            raise
        listed = ", ".join(f"'{name}'" for name in lacking)
        notes = [note for d in err.diagnostics for note in d.notes if other.name in note][-1:]
        raise DataError(shown_path(other), f"the validation file (valid = file(...)) lacks the column"
                        f"{'s' * (len(lacking) > 1)} {listed} that the spec reads from {shown_path(path)}"
                        + "".join(f"; {note}" for note in notes), code=codes.VALID_FILE) from None
    return rows
