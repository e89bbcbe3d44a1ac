"""Predict's and evaluate's reader of JSON Lines: a .jsonl file -> the model's input columns (and
target), read by the fields' names and typed by their values (specc.data.jsonl), then by
specc.inference.columns."""

from __future__ import annotations

from pathlib import Path

from specc.data.jsonl import first_block_types, read_jsonl
from specc.inference.columns import Ask
from specc.inference.read_fields import FieldInputs, asked_columns, table_inputs
from specc.language.diagnostics import UsageError


def read_jsonl_rows(path: Path, session, ask: Ask) -> FieldInputs:
    """The model's input columns (and `ask.target`, and `ask.keep` where the file has it) from a
    JSON Lines file, by field name; a field its first rows lack, or whose values the model's input
    cannot take (text for numbers), is an error naming it before the file is read whole."""
    if ask.delimiter is not None:
        raise UsageError(f"--delimiter: {path} is a JSON Lines file, not a CSV")
    if ask.arrays:
        raise UsageError(f"--array names arrays of an .npz archive; {path} is a JSON Lines file (its fields name "
                         "the columns)")
    columns, kept = asked_columns(path, session, ask, first_block_types(path), "its first rows have")
    return table_inputs(path, session, ask, read_jsonl(path, tuple(columns + kept)), kept)
