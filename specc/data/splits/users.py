"""The splits of recommenders, user by user: per_user(fraction, seed, by), a random share of each
user's rows (as RecBole's ratio split), and leave_last(n, by, user), each user's latest rows. Both
leave every user at least one training row, and both work on all users at once (a sort by user,
then by a random key or by time), never a Python loop over users."""

from __future__ import annotations

from specc.data.splits.base import NUMBER, DataColumn, SplitDef
from specc.data.splits.rows import leaves_rows
from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import CATEGORY, LeaveLastSplit, PerUserSplit
from specc.model.ops.base import Int, Real


def _groups(values):
    """Each row's user as a number from 0 (users in sorted order), and each user's count of rows."""
    import numpy as np

    users = np.unique(values, return_inverse=True)[1].reshape(-1)
    return users, np.bincount(users)


def _per_user(split: PerUserSplit, n: int, columns: dict, path: str):
    """Rows sorted by user, then by a random key drawn for every row with `seed`: a user's first k
    rows in that order are its validation rows, k = count x fraction rounded half up (rounded to 9
    decimals first, so that 50 x 0.29 is 14.5), at most count - 1."""
    import numpy as np

    users, counts = _groups(columns[split.by])
    keys = np.random.default_rng(split.seed).random(n)
    order = np.lexsort((keys, users))
    take = np.minimum(np.floor(np.round(counts * split.fraction, 9) + 0.5).astype(np.int64), counts - 1)
    place = np.arange(n) - (np.cumsum(counts) - counts)[users[order]]  # 0: the user's first row in order
    chosen = place < take[users[order]]
    train, valid = np.sort(order[~chosen]), np.sort(order[chosen])
    leaves_rows(f"per_user({split.fraction:g})", n, len(valid), path, f" ({len(counts)} users)")
    return train, valid


def _leave_last(split: LeaveLastSplit, n: int, columns: dict, path: str):
    """Rows sorted by user, then by `by`, then by their place in the file: a user's last
    min(n, count - 1) rows in that order are its validation rows."""
    import numpy as np

    users, counts = _groups(columns[split.user])
    by = np.asarray(columns[split.by])
    if by.dtype.kind == "f" and not np.isfinite(by).all():
        k = int(np.argmax(~np.isfinite(by)))
        found = "a missing value" if np.isnan(by[k]) else f"{by[k]}"
        raise DataError(path, f"data row {k + 1} holds {found}; leave_last orders each user's rows by this column",
                        column=split.by, code=codes.BAD_NUMBER)
    order = np.lexsort((np.arange(n), by, users))
    after = np.cumsum(counts)[users[order]] - 1 - np.arange(n)  # 0: the user's last row in order
    chosen = after < np.minimum(split.n, counts - 1)[users[order]]
    train, valid = np.sort(order[~chosen]), np.sort(order[chosen])
    leaves_rows(f"leave_last({split.n})", n, len(valid), path, f" ({len(counts)} users)")
    return train, valid


_USER = "user"

SPLITS = (
    SplitDef("per_user", "for each user (each value of the category input `by`), a random `fraction` of its rows, "
             "drawn with `seed`: the user's count of rows times `fraction`, rounded half up (2.5 is 3), at most "
             "all but one (a user with a single row keeps it in training)", "per_user(0.2, seed=1, by=user)",
             (Real("fraction", 0.0, 1.0, low_open=True, high_open=True, what="validation fraction",
                   doc="the share of each user's rows in the validation set"),
              Int("seed", low=0, high=2**31 - 1, default=0, what="seed", doc="numpy's default_rng(seed) draws them"),
              DataColumn("by", _USER, CATEGORY, "the category input that names each row's user")),
             make=lambda a, span: PerUserSplit(a["fraction"], a["seed"], a["by"], span), pick=_per_user),
    SplitDef("leave_last", "each user's last `n` rows in the order of the numeric column `by` (ties in file order; "
             "a column the inputs do not declare is read from the file for the split alone), at most all but one "
             "(a user with n or fewer rows keeps one in training)", "leave_last(1, by=timestamp, user=user)",
             (Int("n", low=1, high=2**31 - 1, what="validation rows per user", doc="validation rows per user"),
              DataColumn("by", "timestamp", NUMBER, "the numeric column that orders each user's rows"),
              DataColumn("user", _USER, CATEGORY, "the category input that names each row's user")),
             make=lambda a, span: LeaveLastSplit(a["n"], a["by"], a["user"], span), pick=_leave_last),
)
