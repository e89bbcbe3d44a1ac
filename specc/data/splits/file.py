"""The split of a second file: file(path), validation rows that come apart from the training file
(MovieLens' u1.base and u1.test), read as the source reads its own file (specc.data.read)."""

from __future__ import annotations

from specc.data.splits.base import FileName, SplitDef
from specc.language.spec import FileSplit


def _every_row_trains(split: FileSplit, n: int, columns: dict, path: str):
    """The source's own file is the training set, every row of it."""
    import numpy as np

    return np.arange(n), np.arange(0)


SPLIT = SplitDef("file", "the rows of a second file laid out as the source's (its columns, its kind), read as the "
                 "source reads its own; the source's file is the training set", 'file("data/u1.test")',
                 (FileName("path", "the validation file, relative to the spec as the source's path is"),),
                 make=lambda a, span: FileSplit(a["path"], span), pick=_every_row_trains,
                 valid_file=lambda split: split.path)
