"""The source registry: every kind of data source a spec may name, declared once, numpy-free (see
specc.data.sources.base). `SOURCES` maps each name to its declaration; a checked source's `kind`
names the one every later stage calls (check, prepare, show, export, predict, evaluate), so that no
stage has a branch per source. docs/adding-a-source.md says how to add one."""

from __future__ import annotations

from specc.data.sources import delimited, frame, images, jsonl, npz, parquet
from specc.data.sources.base import SourceDef

SOURCES: dict[str, SourceDef] = {d.name: d for d in (*delimited.SOURCES, npz.SOURCE, images.SOURCE, parquet.SOURCE,
                                                         jsonl.SOURCE)}
# Sources specc makes itself, which no spec can name: the frame a Python caller gives specc.train.
MADE: dict[str, SourceDef] = {frame.SOURCE.name: frame.SOURCE}
TEXT = "csv"  # the source predict reads a file with when no source recognises it and the model's own does not


class UndeclaredSource(KeyError):
    """A source kind no declaration names: a bug where the kind came from specc itself."""

    def __str__(self) -> str:
        return str(self.args[0])


def source_def(kind: str) -> SourceDef:
    """The declaration of a source kind (UndeclaredSource, a KeyError, for one not declared)."""
    try:
        return SOURCES[kind] if kind in SOURCES else MADE[kind]
    except KeyError:
        raise UndeclaredSource(f"no source '{kind}' is declared in specc.data.sources (the sources: "
                               f"{', '.join(SOURCES)})") from None
