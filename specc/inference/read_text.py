"""Predict's and evaluate's reader of text: a CSV (or other delimited text, compressed or not) ->
the model's input columns (and target) as raw arrays, typed by specc.inference.columns. The file has
a header naming the columns, or is laid out as the spec read its training data (the model's
specc.reading), whose missing-value markers and stripping apply either way."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from specc.data.files import bad_byte, check_regular, has_surrogates, not_utf8, open_text
from specc.data.table import Table, header_problem, read_table, shown_names
from specc.inference.columns import Ask, Inputs, fed, missing_text, read_as
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError
from specc.language.spec import CATEGORY, FLOAT, Column, CsvSource

DELIMITERS = (",", "\t", ";", "|")


@dataclass
class TextInputs(Inputs):
    """A CSV's inputs: a value is at its line of the file."""

    table: Table | None = None

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> DataError:
        row = index[0] if isinstance(index, tuple) else index
        return DataError(self.path, message, line=None if whole else self.table.line(row), column=column, code=code)


def text_options(session, path: Path) -> CsvSource:
    """How the spec read its training data, as a source at `path` (a model that did not read text:
    a CSV with a header)."""
    opts = session.reading if session.reading.get("format") == "csv" else {}
    columns = opts.get("columns")
    return CsvSource(path, opts.get("delimiter", ","), opts.get("header", True),
                     tuple(columns) if columns else None, None, tuple(opts.get("missing", ())),
                     bool(opts.get("strip", False)))


def read_text(path: Path, session, ask: Ask) -> TextInputs:
    """The model's input columns (and `ask.target`) from a CSV: one with a header naming them (the
    delimiter is `ask.delimiter`, else the training data's or the first of , tab ; | that finds
    them all), or one laid out as the spec read its training data (no header, its `columns`). Ids
    come as int64 or strings, numbers as float32; NaN only where the model fills or flags it.
    `ask.keep`: a column read as text, as given, where the file has one."""
    check_regular(path)
    if ask.arrays:
        raise UsageError(f"--array names arrays of an .npz archive; {path} is a CSV (its header names the columns)")
    training = text_options(session, path)
    columns = {col.name: col for name in session.inputs for col in read_as(session, name)}
    if ask.target:
        target_kind = CATEGORY if session.metadata.get("specc.target_kind") == CATEGORY else FLOAT
        columns.setdefault(ask.target, Column(ask.target, target_kind, None))
    for col in ask.split_columns:  # read for evaluate's split
        columns.setdefault(col.name, Column(col.name, col.kind, None))
    wanted = list(columns)
    first = first_line(path)
    source = _layout(path, training, wanted, first, ask)
    header = list(training.columns) if source is training else [n.strip() for n in split_line(first, source.delimiter)]
    kept = [ask.keep] if ask.keep and ask.keep not in wanted and ask.keep in header else []
    # the kept column as text: predict writes it back as given
    table = read_table(source, (*columns.values(), *(Column(name, CATEGORY, None) for name in kept)))
    got = TextInputs({}, table.rows, path=table.path, table=table)
    for name in session.inputs:
        got.feed[name] = fed(session, name, table.columns, got)
    if ask.target:
        got.target = table.columns[ask.target]
    got.kept = {name: table.columns[name] for name in kept}
    got.split_values = {col.name: table.columns[col.name] for col in ask.split_columns}
    return got


def _layout(path: Path, training: CsvSource, wanted: list[str], first: str, ask: Ask) -> CsvSource:
    """How to read the file: with the header its first line is (split at the delimiter that finds
    every wanted column), or as the training data was laid out; else an error that says why not."""
    tried = [ask.delimiter] if ask.delimiter else list(dict.fromkeys((training.delimiter, *DELIMITERS)))
    best: tuple[str, list[str]] | None = None
    for d in tried:
        names = [n.strip() for n in split_line(first, d)]
        if all(name in names for name in wanted):
            return CsvSource(path, d, True, None, None, training.missing, training.strip)
        if best is None or len(names) > len(best[1]):
            best = (d, names)
    layout = training.columns is not None and ask.delimiter in (None, training.delimiter)
    if layout and len(split_line(first, training.delimiter)) == len(training.columns) and \
            all(name in training.columns for name in wanted):
        return training  # the training data's layout: its delimiter and column names
    raise _missing_columns(str(path), wanted, ask.target, best, first, training if layout else None)


def first_line(path: Path) -> str:
    """The file's first line (a byte-order mark skipped), for finding its header and delimiter."""
    with open_text(path) as f:
        first = f.readline(1 << 20).rstrip("\r\n")
        if not first and not f.read(1):
            raise DataError(str(path), "the file is empty", code=codes.NO_ROWS)
    if has_surrogates(first):
        raise not_utf8(str(path), 1, byte=bad_byte(first))
    return first


def split_line(line: str, delimiter: str) -> list[str]:
    """A line's fields; a line the csv module will not split (a field past its size limit) is one."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return [line]


def _shown_delimiter(d: str) -> str:
    return "tab" if d == "\t" else f"'{d}'"


def _missing_columns(path: str, wanted: list[str], target: str | None, best: tuple[str, list[str]], first: str,
                     training: CsvSource | None) -> DataError:
    """No header names every column the model needs (and, for a model trained on a file without
    one, line 1 is no row laid out as that file was): say what is missing and what line 1 has (its
    names as parsed, never the raw line)."""
    d, names = best
    absent = [name for name in wanted if name not in names]
    problem = header_problem(names)
    has = f"line 1 {problem}" if problem else f"the header has: {shown_names(names)}"
    missing = f"{', '.join(repr(m) for m in absent)}"
    if training is None:
        what = "target" if absent == [target] else "input"
        return DataError(path, f"{missing_text(absent, what)} ({has})", line=1, code=codes.MISSING_INPUT)
    fields = len(split_line(first, training.delimiter))
    partial = not problem and len(absent) < len(wanted)  # a header, but short of some columns
    detail = f"; as a header it names {shown_names(names)}, not {missing}" if partial else ""
    return DataError(path, f"line 1 is neither a header naming the model's columns ({shown_names(wanted)}) nor a "
                     f"row laid out as the training data was: {len(training.columns)} "
                     f"{_shown_delimiter(training.delimiter)}-separated fields "
                     f"({shown_names(list(training.columns))}), no header; it has {fields} "
                     f"field{'s' if fields != 1 else ''}{detail}", line=1, code=codes.MISSING_INPUT)
