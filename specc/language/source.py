"""Source text and spans: character offsets -> 1-based line and column."""

from __future__ import annotations

import bisect
import unicodedata
from dataclasses import dataclass, field

TAB_SIZE = 8


def display_width(text: str) -> int:
    """Terminal columns of a string: East Asian wide and full-width characters take two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


@dataclass(frozen=True, slots=True)
class Source:
    """A named piece of spec text (a file, or a `--set` override)."""

    path: str
    text: str
    _line_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        for i, ch in enumerate(self.text):
            if ch == "\n":
                starts.append(i + 1)
        object.__setattr__(self, "_line_starts", tuple(starts))

    def line_of(self, offset: int) -> int:
        """1-based line number of a character offset."""
        return bisect.bisect_right(self._line_starts, offset)

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, without its newline."""
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return (self.text[start:] if end < 0 else self.text[start:end]).rstrip("\r")

    def column_of(self, offset: int) -> int:
        """1-based column of an offset as a terminal shows it: tabs expanded, wide characters 2."""
        line = self.line_of(offset)
        before = self.text[self._line_starts[line - 1]:offset]
        return display_width(before.expandtabs(TAB_SIZE)) + 1

    def end_span(self) -> Span:
        """A zero-width span just after the last non-blank character."""
        end = len(self.text.rstrip())
        return Span(self, end, end)


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open range of character offsets in one source."""

    source: Source = field(repr=False, compare=False)
    start: int
    end: int

    @property
    def line(self) -> int:
        return self.source.line_of(self.start)

    @property
    def column(self) -> int:
        return self.source.column_of(self.start)

    @property
    def text(self) -> str:
        return self.source.text[self.start:self.end]

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of `other`."""
        return Span(self.source, self.start, max(self.end, other.end))
