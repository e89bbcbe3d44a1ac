"""User files: path -> a regular file opened for reading, or an error that says what the path is.

Every file a user names (a spec's data, a model, a names file, rows to predict) is read through
here: a device such as /dev/zero would be read forever, a FIFO blocks until a writer comes, and a
symbolic link loop has no file at all, so anything but a regular file is refused before it is
opened. Bytes that are not UTF-8 are left for the readers, which know the line and column."""

from __future__ import annotations

import errno
import io
import os
import stat
import zipfile
import zlib
from pathlib import Path

from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError

NOT_FOUND_NOTE = "a path in a spec is relative to the spec's folder; one given with --set, to the working folder"

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _problem(path: Path) -> tuple[str, str] | None:
    """None for a regular file; else (short message, what the path is)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop", "a symbolic link loop"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "file not found", "not there"
        return f"cannot be read: {(err.strerror or str(err)).lower()}", (err.strerror or str(err)).lower()
    if stat.S_ISREG(mode):
        return None
    kind = file_kind(mode)
    return f"is {kind}, not a regular file", kind


def file_kind(mode: int) -> str:
    """What a path whose stat mode is not a regular file's is, in words: 'a FIFO (named pipe)'."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: Path, span=None) -> None:
    """Refuse a path that is not a readable regular file: at the spec's span (E208) when a spec
    names it, else as a data error naming the file."""
    problem = _problem(Path(path))
    if problem is None:
        return
    message, kind = problem
    if span is None:
        raise DataError(str(path), message, code=codes.UNREADABLE_PATH)
    if message == "file not found":
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data file not found: {path}", span, (NOT_FOUND_NOTE,))])
    if message == "is a symbolic link loop":
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data file is a symbolic link loop: {path}", span,
                                    ("its links lead back to themselves and never to a file",))])
    if message.startswith("cannot be read"):
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data file cannot be read: {path}", span, (kind,))])
    raise SpecError([Diagnostic(codes.DATA_FILE, f"data file is not a regular file: {path}", span,
                                (f"it is {kind}; specc reads data from regular files only",))])


def open_binary(path: Path, span=None):
    """A regular file opened for reading bytes (see check_regular). It is opened without blocking
    and checked again once open, so that a FIFO put in its place in between cannot hang the read."""
    check_regular(path, span)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        if span is not None:
            raise SpecError([Diagnostic(codes.DATA_FILE, f"data file cannot be read: {path}", span,
                                        ((err.strerror or str(err)).lower(),))]) from None
        raise DataError(str(path), f"cannot be read: {(err.strerror or str(err)).lower()}",
                        code=codes.UNREADABLE_PATH) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(str(path), "is not a regular file (it changed while it was opened)", code=codes.UNREADABLE_PATH)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# The endings pyarrow's CSV reader decompresses by (pyarrow.input_stream's `compression="detect"`,
# which compares the name's end as it is, case and all): open_text decompresses the same files, so
# that the fast reader and the Python reader behind it always read the same text.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".lz4": "lz4", ".zst": "zstd"}


def compression(path: Path) -> str | None:
    """The codec a file's name asks for (pyarrow's name for it), or None for plain text."""
    return next((codec for end, codec in COMPRESSIONS.items() if str(path).endswith(end)), None)


def open_text(path: Path, span=None, errors: str = "surrogateescape"):
    """A regular file opened as UTF-8 text for the csv module, a leading byte-order mark skipped;
    a `.gz`, `.bz2`, `.lz4` or `.zst` file decompressed as it is read (see Decompressed).
    With the default `surrogateescape` a byte that is not UTF-8 reads as a lone surrogate, so the
    reader keeps going and the caller can say on which line and in which column it is (not_utf8)."""
    import io

    raw = open_binary(path, span)
    codec = compression(path)
    if codec is not None:
        raw = io.BufferedReader(Decompressed(raw, codec, str(path)), 1 << 16)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")


class Decompressed(io.RawIOBase):
    """The decompressed bytes of an open file, through pyarrow's codecs (pyarrow.CompressedInputStream,
    the one the fast reader uses). Damaged or cut-short data is an error naming the file and the
    line it reached, never a traceback from inside the codec."""

    def __init__(self, raw, codec: str, path: str):
        import pyarrow as pa  # here: only a compressed file needs it

        super().__init__()
        self._raw, self._codec, self._path, self._lines = raw, codec, path, 0
        self._stream = pa.CompressedInputStream(raw, codec)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._stream.read(len(buffer))
        except OSError as err:  # pyarrow's words for a damaged stream: "zlib inflate failed: ..."
            shown = {"gzip": "gzip", "bz2": "bzip2", "lz4": "LZ4", "zstd": "Zstandard"}[self._codec]
            raise DataError(self._path, f"cannot be decompressed as {shown}, as its name asks: the file is "
                            f"damaged, cut short or not {shown} ({err})", line=self._lines + 1,
                            code=codes.DAMAGED_FILE) from None
        buffer[:len(data)] = data
        self._lines += data.count(b"\n")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self._raw.close()
        super().close()


def shown_path(path) -> str:
    """A path as a message shows it: relative to the working folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def has_surrogates(text: str) -> bool:
    """True when text read with surrogateescape held bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def first_not_text(values) -> int | None:
    """The index of the first string of a 1-d array that holds a lone surrogate (a byte that was not
    UTF-8, kept by surrogateescape: numpy stores it), which UTF-8, and so ONNX, cannot hold; None
    when every one is text. A numpy string array is scanned by its code points, in pieces."""
    import numpy as np

    if values.dtype.kind != "U":
        return next((k for k, v in enumerate(values) if isinstance(v, str) and has_surrogates(v)), None)
    if not values.dtype.itemsize:
        return None
    step = max(1, (1 << 24) // values.dtype.itemsize)
    for start in range(0, len(values), step):
        part = np.ascontiguousarray(values[start:start + step])
        codes = part.view(np.uint32).reshape(len(part), -1)
        bad = ((codes >= 0xD800) & (codes <= 0xDFFF)).any(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def bad_byte(text: str) -> str:
    """The first undecodable byte of text read with surrogateescape, as 0xNN."""
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            return f"0x{ord(ch) - 0xDC00:02x}"
    return "?"


def not_utf8(path: str, line: int | None, column: str | None = None, byte: str | None = None) -> DataError:
    """The error for bytes that are not UTF-8, at their line (and column, when known)."""
    what = f"byte {byte} is not UTF-8 text" if byte else "is not UTF-8 text"
    return DataError(path, f"{what}; specc reads text files as UTF-8: convert it (e.g. iconv -f latin1 -t utf-8)",
                     line=line, column=column, code=codes.NOT_UTF8)


def resolved(path: Path) -> Path:
    """The absolute path with symbolic links resolved; for a link loop, which Path.resolve raises
    on, the absolute path as it is, for the reader to report as a loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def load_npz(path: Path, span=None):
    """An .npz archive opened without pickle, or an error that says what the file is instead."""
    import numpy as np  # here: `specc check --no-data` needs only resolved() of this module

    check_regular(path, span)
    shown = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's words for a file that is neither .npy nor .npz: "pickled data"
        raise DataError(shown, "is not an .npz archive of arrays (numpy's format, as np.savez writes)",
                        code=codes.DAMAGED_FILE) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(shown, f"is not a readable .npz archive ({err})", code=codes.DAMAGED_FILE) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(shown, f"is a single .npy array (shape {archive.shape}), not an .npz archive of named "
                        "arrays: save it with np.savez(file, name=array)", code=codes.DAMAGED_FILE)
    return archive


def npz_array(archive, name: str, path: str):
    """One array of an archive: never unpickled; a damaged member is an error naming it."""
    try:
        return archive[name]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(path, f"array '{name}' holds Python objects; specc never unpickles data",
                            code=codes.PICKLED_ARRAY) from None
        raise DataError(path, f"array '{name}' cannot be read ({err})", code=codes.DAMAGED_FILE) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(path, f"array '{name}' cannot be read: the archive is damaged ({err})",
                        code=codes.DAMAGED_FILE) from None


def is_npz(path: Path) -> bool:
    """Arrays, not a CSV: an .npz (or .npy) by its name, or by its first bytes (a zip file's, or
    numpy's own) whatever its name; load_npz says what a file that is not an archive is."""
    if path.suffix in (".npz", ".npy"):
        return True
    with open_binary(path) as f:
        start = f.read(6)
    return start == b"\x93NUMPY" or start[:4] == b"PK\x03\x04"


PARQUET_ENDINGS = (".parquet", ".parq", ".pq")  # compared in lower case


def is_parquet(path: Path) -> bool:
    """A Parquet file by its name, or by its first bytes (`PAR1`, as every Parquet file starts)."""
    if path.name.lower().endswith(PARQUET_ENDINGS):
        return True
    with open_binary(path) as f:
        return f.read(4) == b"PAR1"


def describe_array(arr) -> str:
    """What an array holds, in words: 'int64 numbers of shape (3, 2)'."""
    kind = arr.dtype.kind
    what = {"U": "strings", "S": "byte strings", "b": "booleans", "c": "complex numbers", "M": "dates",
            "m": "time spans", "V": "raw records", "O": "Python objects"}.get(kind, f"{arr.dtype} numbers")
    return f"{what} of shape {tuple(arr.shape)}"
