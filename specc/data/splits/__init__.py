"""The split registry: every kind of validation split a spec may name in `valid = ...`, declared once,
numpy-free (see specc.data.splits.base). `SPLITS` maps each name to its declaration; a checked
split's `kind` names the one every later stage calls (check, read, pick, export, evaluate), so that
no stage has a branch per split."""

from __future__ import annotations

from specc.data.splits import file, rows, users, whole
from specc.data.splits.base import SplitDef

SPLITS: dict[str, SplitDef] = {d.name: d for d in (*rows.SPLITS, *users.SPLITS, file.SPLIT, whole.SPLIT)}


class UndeclaredSplit(KeyError):
    """A split kind no declaration names: a bug where the kind came from specc itself."""

    def __str__(self) -> str:
        return str(self.args[0])


def split_def(kind: str) -> SplitDef:
    """The declaration of a split kind (UndeclaredSplit, a KeyError, for one not declared)."""
    try:
        return SPLITS[kind]
    except KeyError:
        raise UndeclaredSplit(f"no split '{kind}' is declared in specc.data.splits (the splits: "
                              f"{', '.join(SPLITS)})") from None


def validates(split) -> bool:
    """Whether the spec's split (None: the default, or the data's own) keeps validation rows; `none` keeps none."""
    return split is None or split_def(split.kind).validates


def validation_rows(split, n_valid: int) -> str:
    """The validation rows in words, as check and train print them: their count, or that `valid = none` keeps none."""
    return f"{n_valid} validation rows" if validates(split) else "no validation rows (valid = none)"
