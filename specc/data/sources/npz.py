"""The npz(...) source: numpy arrays named after the columns, read without pickle (specc.data.arrays),
the file's own `<column>_train` / `<column>_valid` arrays or one array per column that `valid` splits."""

from __future__ import annotations

from specc.data.sources.base import FilePath, SourceDef
from specc.language.spec import NpzSource


def _make(path, args: dict, span) -> NpzSource:
    return NpzSource(path, span)


def _read(data, wanted) -> tuple[dict, dict, str]:
    from specc.data.arrays import read_npz

    return read_npz(data.source, wanted, data.valid)


def _preview(spec, columns: tuple, n: int) -> tuple[dict, dict, str]:
    from specc.data.arrays import read_npz

    return read_npz(spec.data.source, columns, spec.data.valid)


def _reading(source: NpzSource) -> dict:
    return {"format": "npz"}


def _reader(path, session, ask):
    from specc.inference.read_arrays import read_arrays

    return read_arrays(path, session, ask)


def _recognises(path) -> bool:
    """An .npz (or .npy) by its name, or a file that starts as a zip archive or a numpy array does."""
    from specc.data.files import is_npz

    return not path.is_dir() and is_npz(path)


SOURCE = SourceDef("npz", "numpy arrays in an .npz archive, one per column (or `<column>_train` and `_valid`)",
                   (FilePath(),), make=_make, read=_read, preview=_preview, reading=_reading, reader=_reader,
                   recognises=_recognises)
