"""The split that keeps no validation rows: none, every row of the source a training row (to train
a final model on all the data once its settings are chosen)."""

from __future__ import annotations

from specc.data.splits.base import SplitDef
from specc.language.spec import NoSplit


def _every_row(split: NoSplit, n: int, columns: dict, path: str):
    """Every row trains; none validates."""
    import numpy as np

    return np.arange(n), np.arange(0)


SPLIT = SplitDef("none", "no validation rows: every row is a training row; no validation loss or metrics while "
                 "training, no early stopping", "none", (), make=lambda a, span: NoSplit(span), pick=_every_row,
                 validates=False)
