"""Diagnostics: what went wrong and where, rendered as `path:line:col: error[CODE]: ...`."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from specc.language.codes import Code
from specc.language.source import TAB_SIZE, Span, display_width


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about a span of spec text."""

    code: Code  # specc.language.codes names them all
    message: str
    span: Span | None
    notes: tuple[str, ...] = ()
    severity: str = "error"

    @property
    def path(self) -> str | None:
        """The name of the text it is about: a file's path, `<string>`, `--set`."""
        return self.span.source.path if self.span is not None else None

    @property
    def line(self) -> int | None:
        """1-based, as rendered; None for a diagnostic about no place."""
        return self.span.line if self.span is not None else None

    @property
    def column(self) -> int | None:
        """1-based, as rendered (tabs expanded, wide characters two)."""
        return self.span.column if self.span is not None else None

    def _repr_html_(self) -> str:
        from specc.api.display import diagnostics_html

        return diagnostics_html([self])

    def render(self) -> str:
        """mypy --pretty style: header, the source line, a caret under the span, notes."""
        if self.span is None:
            lines = [f"{self.severity}[{self.code}]: {self.message}"]
        else:
            src, line = self.span.source, self.span.line
            col = self.span.column
            lines = [f"{src.path}:{line}:{col}: {self.severity}[{self.code}]: {self.message}"]
            text = src.line_text(line) if src.text else ""
            shown = text.expandtabs(TAB_SIZE)
            # The caret runs to the span's end or the end of its first line, whichever is first.
            end_line = src.line_of(max(self.span.start, self.span.end - 1))
            if end_line == line and self.span.end > self.span.start:
                width = src.column_of(self.span.end) - col
            else:
                width = max(1, display_width(shown) - col + 1) if self.span.end > self.span.start else 1
            gutter = " " * len(str(line))
            lines.append(f"  {line} | {shown}".rstrip())
            lines.append(f"  {gutter} | {' ' * (col - 1)}^{'~' * max(0, width - 1)}")
        lines.extend(f"  = note: {note}" for note in self.notes)
        return "\n".join(lines)


class SpecError(Exception):
    """One or more diagnostics about a spec; the CLI prints them and exits 1."""

    def __init__(self, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]):
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    def _repr_html_(self) -> str:
        """The diagnostics as a notebook shows them: each with its spec line and caret."""
        from specc.api.display import diagnostics_html

        return diagnostics_html(self.diagnostics)


class DataError(Exception):
    """A problem in a data file: which file, which row (line) and column, and what was expected."""

    def __init__(self, path: str, message: str, line: int | None = None,
                 column: str | None = None, *, code: Code):  # a D-code of specc.language.codes
        self.path, self.message, self.line, self.column, self.code = path, message, line, column, code
        shown = printable(str(path))  # a name that is not UTF-8, or holds a line break, as one printable line
        where = f"{shown}:{line}" if line is not None else shown
        what = f"column '{column}': {message}" if column is not None else message
        super().__init__(f"{where}: error[{code}]: {os_text(what)}")

    def render(self) -> str:
        return str(self)

    def named(self, name: str) -> DataError:
        """The same error about the same data, named otherwise: a frame the API wrote to a file of its own
        is named as the caller knows it (`<pandas DataFrame>`), wherever the message names the file."""
        return DataError(name, self.message.replace(str(self.path), name), self.line, self.column, code=self.code)

    def _repr_html_(self) -> str:
        from specc.api.display import message_html

        return message_html(self.render())


def first_line(err: BaseException) -> str:
    """An exception from a library, in a few words for a message: its first line (its type's name
    when it says nothing)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # the lone surrogates that stand for bytes under surrogateescape


def os_text(name: str) -> str:
    """A name from the file system as UTF-8 text: each byte that is not UTF-8 (which os gives as a
    lone surrogate, surrogateescape) written as \\xNN, so that it can go into a model, JSON or a CSV."""
    return _NOT_UTF8.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", name)


def printable(text: str) -> str:
    """A user's name or path as one line of a message: bytes that are not UTF-8 as \\xNN (os_text),
    a line break, tab or other control character escaped as Python writes it ('x\\ny')."""
    text = os_text(text)
    return text if text.isprintable() else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class UsageError(Exception):
    """A command-line mistake (exit 2)."""


def suggest(word: str, candidates) -> tuple[str, ...]:
    """`did you mean` notes: up to three close matches (difflib ratio > 0.75, or > 0.6 for
    short words), and words with the same letters in another order (`mes` -> `mse`)."""
    pool = sorted(set(candidates) - {word})
    cutoff = 0.6 if len(word) <= 4 else 0.75
    matches = difflib.get_close_matches(word, pool, n=3, cutoff=cutoff)
    matches += [c for c in pool if sorted(c) == sorted(word) and c not in matches]
    matches = matches[:3]
    if not matches:
        return ()
    quoted = ", ".join(f"'{m}'" for m in matches)
    return (f"did you mean {quoted}?",)
