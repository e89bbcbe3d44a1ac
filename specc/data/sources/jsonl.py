"""The jsonl(...) source: a JSON Lines file (one object a row; .gz, .zst, .bz2, .lz4 decompressed),
each column typed by the values of its first rows (specc.data.jsonl)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from specc.data.sources.base import FilePath, SourceDef
from specc.language.source import Span

ENDINGS = (".jsonl", ".ndjson")  # with a compression's ending after them, too


@dataclass(frozen=True, slots=True)
class JsonlSource:
    """A JSON Lines file: one object a row, read by pyarrow's JSON reader."""

    kind: ClassVar[str] = "jsonl"
    path: Path
    span: Span = field(compare=False, repr=False)


def _read(data, wanted) -> tuple[dict, dict, str]:
    from specc.data.jsonl import read_jsonl
    from specc.data.split import table_rows

    return table_rows(data, wanted, read_jsonl(data.source.path, wanted, data.source.span))


def _preview(spec, columns: tuple, n: int) -> tuple[dict, dict, str]:
    from specc.data.jsonl import read_jsonl
    from specc.data.split import split_table

    return split_table(read_jsonl(spec.data.source.path, columns, spec.data.source.span), columns, spec.data.valid)


def _reader(path, session, ask):
    from specc.inference.read_jsonl import read_jsonl_rows

    return read_jsonl_rows(path, session, ask)


def _recognises(path) -> bool:
    """A JSON Lines file by its name: .jsonl or .ndjson, compressed or not."""
    from specc.data.files import COMPRESSIONS

    name = path.name.lower()
    name = next((name[:-len(end)] for end in COMPRESSIONS if name.endswith(end)), name)
    return not path.is_dir() and name.endswith(ENDINGS)


SOURCE = SourceDef("jsonl", "a JSON Lines file, one object a row (columns typed by their values)", (FilePath(),),
                   make=lambda path, args, span: JsonlSource(path, span), read=_read, preview=_preview,
                   reading=lambda source: {"format": "jsonl"}, reader=_reader, recognises=_recognises)
