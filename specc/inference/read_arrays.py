"""Predict's and evaluate's reader of arrays: an .npz archive (never unpickled) -> the model's input
columns (and target), one array a column, typed by specc.inference.columns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specc.data.files import check_regular, describe_array, load_npz, npz_array
from specc.inference.columns import Ask, Inputs, row_shape, typed
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError

SUFFIXES = {"all": ("", "_test", "_valid"), "valid": ("_valid", ""), "train": ("_train", "")}


@dataclass
class ArrayInputs(Inputs):
    """An .npz's inputs: a value is at its index in its array (`arrays`: column -> array name)."""

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> DataError:
        name = self.arrays[column]
        if whole:
            return DataError(self.path, f"array '{name}' {message}", code=code)
        at = index[0] if isinstance(index, tuple) and len(index) == 1 else index
        return DataError(self.path, f"array '{name}', index {at}: {message}", code=code)


def read_arrays(path: Path, session, ask: Ask) -> ArrayInputs:
    """The model's inputs (and `ask.target`) from an .npz file, never unpickling: the array
    `ask.arrays` names for a column, else the column's name with the first suffix of
    SUFFIXES[ask.split] that every other column has too (`x`, `x_test`, `x_valid`: one suffix for all)."""
    check_regular(path)
    if ask.delimiter is not None:
        raise UsageError(f"--delimiter: {path} is an .npz archive, not a CSV")
    shown = str(path)
    wanted = list(session.inputs) + ([ask.target] if ask.target else [])
    wanted += [col.name for col in ask.split_columns if col.name not in wanted]  # read for evaluate's split
    arrays = dict(ask.arrays or {})
    strange = [c for c in arrays if c not in wanted]
    if strange:
        raise UsageError(f"--array {strange[0]}=...: the model has no column '{strange[0]}' "
                         f"(it reads {', '.join(wanted)})")
    with load_npz(path) as archive:
        chosen, suffix = _chosen(archive, wanted, arrays, ask.split, shown)
        data = {c: npz_array(archive, chosen[c], shown) for c in wanted}
    got = ArrayInputs({}, 0, arrays=chosen, path=shown)
    got.split_done = ask.split != "all" and suffix != "" and not arrays
    for c in wanted:
        data[c] = _shaped(data[c], row_shape(session, c), c, got)
    counts = {chosen[c]: len(data[c]) for c in wanted}
    if len(set(counts.values())) > 1:
        raise DataError(shown, "the arrays have different numbers of rows ("
                        + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")", code=codes.DATA_SHAPE)
    got.rows = next(iter(counts.values()))
    if got.rows == 0:
        raise DataError(shown, f"the arrays {', '.join(chosen.values())} have no rows", code=codes.NO_ROWS)
    for name in session.inputs:
        got.feed[name] = typed(session, name, data[name], got)
    if ask.target:
        got.target = data[ask.target]
    got.split_values = {col.name: data[col.name] for col in ask.split_columns}
    return got


def _chosen(archive, wanted: list[str], arrays: dict[str, str], split: str, shown: str) -> tuple[dict, str | None]:
    """The array each column reads (the one --array names, else the column's name and a suffix that
    every other column's array has too), and that suffix."""
    files = list(archive.files)
    listed = ", ".join(sorted(files)) or "no arrays"
    for column, name in arrays.items():
        if name not in files:
            raise DataError(shown, f"has no array '{name}' (--array {column}={name}); it holds: {listed}",
                            code=codes.MISSING_INPUT)
    rest = [c for c in wanted if c not in arrays]
    suffix = next((x for x in SUFFIXES[split] if all(f"{c}{x}" in files for c in rest)), None)
    if suffix is None:
        column = next(c for c in rest if not any(f"{c}{x}" in files for x in SUFFIXES[split]))
        tried = " or ".join(f"'{column}{x}'" for x in SUFFIXES[split])
        if all(any(f"{c}{x}" in files for x in SUFFIXES[split]) for c in rest):
            column, tried = rest[0], "arrays of one suffix for every column"
        raise DataError(shown, f"has no array for the model's column '{column}' (looked for {tried}); it holds: "
                        f"{listed}; name it with --array {column}=NAME", code=codes.MISSING_INPUT)
    return {c: arrays.get(c, f"{c}{suffix}") for c in wanted}, suffix


def _shaped(arr: np.ndarray, want: tuple | None, column: str, got: Inputs) -> np.ndarray:
    """An array with one row per example, each of the shape the model takes ((N, 1) for one value is fine)."""
    name = got.arrays[column]
    if arr.ndim == 0:
        raise DataError(got.path, f"array '{name}' is a single value ({describe_array(arr)}); the model's column "
                        f"'{column}' needs one row per example", code=codes.DATA_SHAPE)
    if want is None:
        return arr
    rows = tuple(arr.shape[1:])
    if want == () and rows == (1,):
        return arr[:, 0]
    if rows != want:
        def rows_of(shape):
            return "one value per row" if shape == () else f"rows of shape {shape}"

        raise DataError(got.path, f"array '{name}' holds {describe_array(arr)}: {rows_of(rows)}, but the model's "
                        f"column '{column}' takes {rows_of(want)}", code=codes.DATA_SHAPE)
    return arr
