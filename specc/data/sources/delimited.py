"""The delimited-text sources, csv(...) and tsv(...): a table of text (compressed or not), read by
pyarrow with each value's line known for messages (specc.data.table). A tsv(...) is a csv(...) whose
delimiter is a tab: both make a csv source."""

from __future__ import annotations

from specc.data.sources.base import Char, FilePath, Flag, Head, Names, Problem, SourceDef, Texts
from specc.language import codes
from specc.language.diagnostics import Diagnostic, suggest
from specc.language.spec import CsvSource


def _make(path, args: dict, span) -> CsvSource:
    header = args["header"] if args["header"] is not None else args["columns"] is None
    return CsvSource(path, args["delimiter"], header, args["columns"], span, args["missing"], args["strip"])


def _make_tsv(path, args: dict, span) -> CsvSource:
    return _make(path, {**args, "delimiter": "\t"}, span)


def _validate(args: dict, given: set[str]) -> Problem | None:
    """Without a header, the spec names the columns."""
    if args["header"] is False and "columns" not in given:
        return Problem("a source without a header needs columns=[...]",
                       ("e.g. csv(\"u.data\", delimiter=\"\\t\", header=false, columns=[user, item, rating, time])",))
    return None


def _columns(source: CsvSource, inputs: tuple, target) -> tuple[list, None]:
    """A CSV column holds one value per row, and is one of the columns the source names."""
    problems = [Diagnostic(codes.BAD_COLUMN, f"column '{col.name}': a CSV column holds one value per row", col.span,
                           ("arrays per row come from npz(...) and parquet(...) sources",))
                for col in read_columns(inputs, target) if col.shape]
    if source.columns is not None:
        problems += selected(source.columns, read_columns(inputs, target))
    return problems, None


def read_columns(inputs: tuple, target) -> tuple:
    """The columns read from the file: the inputs and the target (None: implicit feedback without a
    rating column, whose target is made, not read)."""
    return (*inputs, target) if target is not None else inputs


def selected(names: tuple[str, ...], columns: tuple) -> list[Diagnostic]:
    """Every column the spec reads is one of the source's `columns=[...]` (E201 for each that is not)."""
    return [Diagnostic(codes.UNKNOWN_NAME, f"unknown column '{col.name}'", col.span,
                       tuple(suggest(col.name, names) or [f"the source's columns are {', '.join(names)}"]))
            for col in columns if col.name not in names]


def _read(data, wanted) -> tuple[dict, dict, str]:
    from specc.data.split import table_rows
    from specc.data.table import read_table

    return table_rows(data, wanted, read_table(data.source, wanted))


def _preview(spec, columns: tuple, n: int) -> Head:
    from specc.data.table import head

    return Head(head(spec.data.source, columns, n))


def _reading(source: CsvSource) -> dict:
    return {"format": "csv", "delimiter": source.delimiter, "header": source.header,
            "columns": list(source.columns) if source.columns else None, "missing": list(source.missing),
            "strip": source.strip}


def _reader(path, session, ask):
    from specc.inference.read_text import read_text

    return read_text(path, session, ask)


_AFTER_DELIMITER = (
    Flag("header", None, "the first line names the columns (default: unless `columns` is given)"),
    Names("columns", "the columns' names, for a file without a header (or to rename the header's)"),
    Texts("missing", (), "the texts that mark a missing value, e.g. [\"?\", \"\"]"),
    Flag("strip", False, "spaces around every value removed first"),
)
_HOOKS = dict(validate=_validate, columns=_columns, read=_read, preview=_preview, reading=_reading, reader=_reader)

SOURCES = (
    SourceDef("csv", "a delimited text file (.gz, .zst, .bz2 or .lz4: decompressed as it is read)",
              (FilePath(), Char("delimiter", ",", "one character"), *_AFTER_DELIMITER), make=_make, **_HOOKS),
    SourceDef("tsv", "a tab-separated text file: csv(...) with delimiter=\"\\t\"",
              (FilePath(), *_AFTER_DELIMITER), make=_make_tsv, **_HOOKS),
)
