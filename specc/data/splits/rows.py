"""The splits by place in the file: random(fraction, seed), rows(start, end) and last(fraction)."""

from __future__ import annotations

from specc.data.splits.base import SplitDef
from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import LastSplit, RandomSplit, RowSplit
from specc.model.ops.base import Int, Real

_FRACTION = Real("fraction", 0.0, 1.0, low_open=True, high_open=True, what="validation fraction",
                 doc="the share of the rows in the validation set")
_SEED = Int("seed", low=0, high=2**31 - 1, default=0, what="seed", doc="numpy's default_rng(seed) draws them")


def leaves_rows(split_text: str, n: int, n_valid: int, path: str, among: str = "") -> None:
    """D106 where a split of n rows puts none, or every one, in the validation set."""
    if n_valid == 0 or n_valid == n:
        raise DataError(path, f"{split_text} of {n} rows{among} leaves "
                        f"{'no validation' if n_valid == 0 else 'no training'} rows", code=codes.EMPTY_SPLIT)


def _random(split: RandomSplit, n: int, columns: dict, path: str):
    import numpy as np

    order = np.random.default_rng(split.seed).permutation(n)
    n_valid = int(round(n * split.fraction))
    leaves_rows(f"random({split.fraction:g})", n, n_valid, path)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def _rows(split: RowSplit, n: int, columns: dict, path: str):
    import numpy as np

    end = n if split.end is None else min(split.end, n)
    if split.start >= n:
        raise DataError(path, f"rows({split.start}, ...): the file has only {n} rows", code=codes.EMPTY_SPLIT)
    valid = np.arange(split.start, end)
    train = np.concatenate([np.arange(0, split.start), np.arange(end, n)])
    if len(train) == 0:
        raise DataError(path, f"rows({split.start}, {end}) leaves no training rows", code=codes.EMPTY_SPLIT)
    return train, valid


def _last(split: LastSplit, n: int, columns: dict, path: str):
    import numpy as np

    n_valid = int(round(n * split.fraction))
    leaves_rows(f"last({split.fraction:g})", n, n_valid, path)
    return np.arange(0, n - n_valid), np.arange(n - n_valid, n)


def _end_after_start(args: dict) -> str | None:
    if args["end"] is not None and args["end"] <= args["start"]:
        return f"rows({args['start']}, {args['end']}): the end must come after the start"
    return None


SPLITS = (
    SplitDef("random", "a random `fraction` of the rows (numpy's `default_rng(seed)`)", "random(0.2, seed=42)",
             (_FRACTION, _SEED), make=lambda a, span: RandomSplit(a["fraction"], a["seed"], span), pick=_random),
    SplitDef("rows", "the rows `start` to `end - 1` (0-based, counting data rows, not the header); without `end`, "
             "to the end of the file", "rows(90000, 100000)",
             (Int("start", low=0, high=2**31 - 1, what="first validation row", doc="the first validation row"),
              Int("end", low=1, high=2**31 - 1, what="end row", optional=True, doc="the row after the last")),
             make=lambda a, span: RowSplit(a["start"], a["end"], span), pick=_rows, validate=_end_after_start),
    SplitDef("last", "the last `fraction` of the rows, for data in time order", "last(0.2)", (_FRACTION,),
             make=lambda a, span: LastSplit(a["fraction"], span), pick=_last),
)
