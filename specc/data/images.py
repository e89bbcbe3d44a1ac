"""Image folders: an images(...) source -> its images as uint8 pixels (N, C, H, W) with each one's
class (its class folder's name), decoded once with Pillow and cached (see cache_dir)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import stat
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specc.data.files import NOT_FOUND_NOTE, file_kind
from specc.data.split import split_rows
from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError, os_text, printable
from specc.language.spec import IMAGE_COLUMN, LABEL_COLUMN, ImagesSource
from specc.model.memory import BUDGET_NOTE, budget, shown_bytes

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # compared in lower case
# Pillow's names of the formats specc reads, the only plugins Image.open tries: never every plugin
# Pillow has (its EPS plugin runs Ghostscript on a PostScript file, whatever the file's name).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
_OPENED_AS = {*FORMATS, "MPO"}  # what their plugins open: JPEG's opens a multi-picture JPEG as MPO
NOT_OURS = "not a PNG, JPEG, BMP, GIF or WebP image, the formats specc reads"
PILLOW_MODES = {"gray": "L", "rgb": "RGB"}
CACHE_VERSION = 2  # bump when the cache file's contents change (2: decoded with FORMATS only)
SKIP_NOTE = "skip_broken=true in images(...) skips the images that cannot be decoded"


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One image of the folder: its path below the folder ('/'-separated), its class, and what
    the cache key takes of it (a changed file has another size or modification time)."""

    relative: str  # as os gives it (to open it), a byte that is not UTF-8 a lone surrogate
    label: str  # the class folder's name as text (os_text)
    valid: bool  # under valid/, in a folder that brings its own split
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Listing:
    """The images of a folder, before any is decoded: in each class by path, the classes taken in
    turn (train/ before valid/)."""

    root: Path
    files: tuple[ImageFile, ...]
    own_split: bool  # train/ and valid/ folders of class folders


@dataclass(frozen=True, slots=True)
class ImageFolder:
    """The decoded images of a folder, in listing order, without those skipped."""

    path: str
    pixels: np.ndarray  # uint8 (N, channels, height, width)
    labels: np.ndarray  # str (N,): each image's class folder name
    valid: np.ndarray | None  # bool (N,): in valid/; None where the spec's split divides the images
    skipped: tuple[tuple[str, str], ...] = ()  # (relative path, Pillow's reason), with skip_broken
    names: tuple[str, ...] = ()  # each image's path below the folder, as os gives it


def shown(path) -> str:
    """A path as an error names it, on one line (printable): relative to the working folder when it
    is below it."""
    try:
        return printable(str(Path(path).relative_to(Path.cwd())))
    except ValueError:
        return printable(str(path))


def cache_dir() -> Path:
    """Where decoded folders are kept: `$SPECC_CACHE/images`, else `$XDG_CACHE_HOME/specc/images`,
    else `~/.cache/specc/images`."""
    root = os.environ.get("SPECC_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "specc")
    return Path(root) / "images"


def load_images(source: ImagesSource, split) -> ImageFolder:
    """The folder's images decoded (from the cache when it holds them). `split` is the spec's
    `valid` setting, which a folder with its own train/ and valid/ folders does not take."""
    listing = list_folder(source)
    if listing.own_split and split is not None:
        raise SpecError([Diagnostic(codes.SPLIT_IN_DATA, f"{printable(source.path.name)}/ has its own train/ and "
                                    "valid/ folders", split.span,
                                    ("remove `valid = ...`: the images in valid/ are the validation set",))])
    cache = cache_dir() / cache_name(listing, source)
    found = _read_cache(cache, listing, source.row_shape)
    if found is None:
        pixels, skipped = _decode_all(listing, source)
        _write_cache(cache, pixels, listing, skipped)
    else:
        pixels, skipped = found
    if skipped and not source.skip_broken:  # decoded earlier with skip_broken=true
        relative, reason = skipped[0]
        raise _broken(listing.root / relative, reason)
    gone = {relative for relative, _ in skipped}
    kept = [f for f in listing.files if f.relative not in gone]
    _every_class_kept(listing, kept, skipped)
    if skipped:
        relative, reason = skipped[0]
        print(f"specc: warning: skipped {len(skipped)} image{'s' if len(skipped) > 1 else ''} that cannot be "
              f"decoded (skip_broken=true); the first: {printable(str(listing.root / relative))}: {reason}",
              file=sys.stderr)
    labels = np.array([f.label for f in kept], dtype=str)
    valid = np.array([f.valid for f in kept], dtype=bool) if listing.own_split else None
    return ImageFolder(str(listing.root), pixels, labels, valid, skipped, tuple(f.relative for f in kept))


# ---------------------------------------------------------------- listing


def list_folder(source: ImagesSource) -> Listing:
    """The class folders and their images: one subfolder per class, or train/ and valid/ folders
    that each hold one subfolder per class. Hidden files and folders are left out; a class is its
    folder's name as text (os_text: a byte that is not UTF-8 reads as \\xNN)."""
    root = source.path
    _check_folder(root, source.span)
    parts = _parts(root)
    classes = {part: _subfolders(root / part) for part in parts}
    for part in parts:
        if not classes[part]:
            _no_classes(root / part)
        _one_class_a_name(root / part, classes[part])
    if len(parts) == 2:
        _known_classes(root / "valid", classes["valid"], classes["train"])
    # before any image is listed: a class folder that holds the whole folder would list it all
    _separate(root, [(f"{part}/{name}" if part else name, root / part / name) for part in parts
                     for name in classes[part]])
    files_seen: dict[tuple[int, int], tuple[str, tuple[str, str]]] = {}  # (device, inode) -> (path, (part, class))
    files = [f for part in parts for f in _part_images(root, part, classes[part], files_seen)]
    _distinct_classes(root, sorted({f.label for f in files}))
    return Listing(root, tuple(files), len(parts) == 2)


def _parts(root: Path) -> tuple[str, ...]:
    """("train", "valid") for a folder that brings its own split, else ("",): the folder itself."""
    folders = _subfolders(root)
    split_roots = [name for name in ("train", "valid") if name in folders and _subfolders(root / name)]
    if len(split_roots) == 1:
        there, missing = split_roots[0], ("valid" if split_roots[0] == "train" else "train")
        raise DataError(shown(root), f"has a {there}/ folder of class folders but no {missing}/ folder of them: give "
                        f"both, or point the source at {printable(root.name)}/{there}/ (the spec's valid split then "
                        "divides its images)", code=codes.IMAGE_FOLDER_LAYOUT)
    return ("train", "valid") if split_roots else ("",)


def _part_images(root: Path, part: str, names: list[str], files_seen: dict) -> list[ImageFile]:
    """The images of one part's class folders (`names`), the classes taken in turn; `files_seen` holds
    each image file met so far, by (device, inode): its path relative to `root` and its (part, class)."""
    base = root / part
    empty, by_class = [], []
    for name in names:
        found = images_below(base / name, root)
        if not found:
            empty.append(name)
        for relative, _, _, file in found:
            if file[1]:  # an inode number (0: not a file, or a file system that numbers none)
                _one_class_a_file(root, relative, (part, name), file, files_seen)
        by_class.append([ImageFile(relative, os_text(name), part == "valid", size, mtime)
                         for relative, size, mtime, _ in found])
    if empty:
        raise DataError(shown(base / empty[0]) if len(empty) == 1 else shown(base),
                        f"class folder{'s' if len(empty) > 1 else ''} {_quoted(empty)} "
                        f"{'hold' if len(empty) > 1 else 'holds'} no images (files ending {_suffixes()})",
                        code=codes.IMAGE_FOLDER_LAYOUT)
    # Round robin: the first image of every class, then the second of every class, ... so that
    # train_rows, rows(...) and last(...) take every class, and the first rows show them all.
    return [images[k] for k in range(max(map(len, by_class))) for images in by_class if k < len(images)]


def _check_folder(root: Path, span) -> None:
    """The folder the spec names must be there and be a folder (E208 at its path in the spec)."""
    try:
        mode = os.stat(root).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SpecError([Diagnostic(codes.DATA_FILE, f"data folder not found: {printable(str(root))}", span,
                                        (NOT_FOUND_NOTE,))]) from None
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data folder cannot be read: {printable(str(root))}", span,
                                    (_reason(err),))]) from None
    if not stat.S_ISDIR(mode):
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data folder is not a folder: {printable(str(root))}", span,
                                    ("images(...) reads a folder with one subfolder of images per class",))])


def _reason(err: OSError) -> str:
    return (err.strerror or str(err)).lower()


def _entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries but hidden ones, by name; an unreadable folder is an error naming it."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise DataError(shown(folder), f"cannot be read: {_reason(err)}", code=codes.UNREADABLE_PATH) from None


def _kind(entry: os.DirEntry) -> str:
    """What an entry leads to, through links: 'folder', 'file' (a regular one), 'other' (a FIFO, a
    device, a socket), 'loop' (a symbolic link loop) or 'missing' (a link to nothing)."""
    try:
        mode = entry.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "loop"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        raise DataError(shown(entry.path), f"cannot be read: {_reason(err)}", code=codes.UNREADABLE_PATH) from None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _nowhere(path: str) -> str:
    """Why a path that stat cannot follow leads nowhere, in words."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop"
        try:
            return f"is a symbolic link to '{printable(os.readlink(path))}', which is not there"
        except OSError:
            return f"cannot be read: {_reason(err)}"
    return "is no longer there"


def _leads_nowhere(entry: os.DirEntry) -> DataError:
    """A link that leads nowhere where a folder of images may have been meant: an error, not a gap."""
    why = _nowhere(entry.path)
    if why == "is a symbolic link loop":
        why += ": its links lead back to themselves, never to a file or folder"
    return DataError(shown(entry.path), why, code=codes.UNREADABLE_PATH)


def _subfolders(folder: Path) -> list[str]:
    """The names of a folder's subfolders (symbolic links to folders too), sorted."""
    names = []
    for e in _entries(folder):
        kind = _kind(e)
        if kind in ("loop", "missing"):
            raise _leads_nowhere(e)
        if kind == "folder":
            names.append(e.name)
    return names


def images_below(folder: Path, root: Path) -> list[tuple[str, int, int, tuple[int, int]]]:
    """(path relative to root, size, modification time, (device, inode)) of every image in `folder` and the
    folders below it, sorted by path (an image that is not a regular file: -1, 0, (0, 0)). Symbolic links
    are followed only within `folder` (a link out of it would read images twice, under another class or
    from elsewhere), a folder reached twice is read once, and a link that leads nowhere is an error unless
    it has an image's name (decode says why)."""
    inside = os.path.realpath(folder)
    found: list[tuple[str, int, int, tuple[int, int]]] = []
    seen: set[tuple[int, int]] = set()
    todo = [folder]  # depth first, in order of name; a stack, so that no tree is too deep for Python
    while todo:
        d = todo.pop()
        try:
            info = os.stat(d)
        except OSError as err:
            raise DataError(shown(d), f"cannot be read: {_reason(err)}", code=codes.UNREADABLE_PATH) from None
        if (info.st_dev, info.st_ino) in seen:  # a link back up the tree, or a second link to a folder
            continue
        seen.add((info.st_dev, info.st_ino))
        below = []
        # the images' paths relative to root, as text: one pathlib computation a folder, not one an image
        prefix = Path(d).relative_to(root).as_posix() + "/" if Path(d) != root else ""
        prefix = "" if prefix == "./" else prefix
        for e in _entries(d):
            kind, image = _kind(e), e.name.lower().endswith(SUFFIXES)
            if kind in ("loop", "missing"):
                if not image:  # with an image's name, decoding says why it cannot be read
                    raise _leads_nowhere(e)
            elif e.is_symlink() and (kind == "folder" or image):
                _within(e.path, inside, folder)
            if kind == "folder":
                below.append(Path(e.path))
            elif image:
                st = e.stat() if kind == "file" else None  # one that is not a file: decoding says what it is
                found.append((prefix + e.name, st.st_size if st else -1, st.st_mtime_ns if st else 0,
                              (st.st_dev, st.st_ino) if st else (0, 0)))
        todo += reversed(below)
    return sorted(found)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or below it (both real, absolute paths)."""
    return os.path.commonpath([path, folder]) == folder


def _within(link: str, inside: str, folder: Path) -> None:
    """A link below `folder` (whose real path is `inside`) must lead to a place below it too."""
    target = os.path.realpath(link)
    if not _inside(target, inside):
        raise DataError(shown(link), f"is a symbolic link out of {shown(folder)} (to {printable(target)}): links are "
                        "followed only within the folder, so that no image is read twice, under another class or "
                        "from elsewhere; link the class folder itself, or copy the images in",
                        code=codes.IMAGE_FOLDER_LAYOUT)


def _one_class_a_file(root: Path, relative: str, where: tuple[str, str], file: tuple[int, int],
                      files_seen: dict) -> None:
    """An image file met again under another class folder (a hard link: two names, one file) would be
    an image of two classes, or in train/ and valid/ both: refused, as class folders that are one are.
    Two names for one file in the same class folder are the same image twice, which is allowed."""
    first, first_where = files_seen.setdefault(file, (relative, where))
    if first_where != where:
        raise DataError(shown(root / relative), f"is the same file as {printable(first)} (a hard link), in another "
                        "class folder: an image can be in one class only", code=codes.IMAGE_FOLDER_LAYOUT)


def _separate(root: Path, folders: list[tuple[str, Path]]) -> None:
    """Class folders (which may be links to folders anywhere) must be distinct folders, none inside
    another nor holding the image folder: else an image would be in two classes, or in train/ and
    valid/ both. Sorted by their real paths' parts, the folders inside one come right after it, so
    comparing neighbours finds any."""
    top = os.path.realpath(root)
    real = sorted((Path(os.path.realpath(path)).parts, name, path) for name, path in folders)
    why = "(through a symbolic link): an image can be in one class only"
    for parts, name, path in real:
        if _inside(top, str(Path(*parts))):
            raise DataError(shown(path), f"class folder '{printable(name)}' holds the image folder {printable(top)} "
                            f"{why}", code=codes.IMAGE_FOLDER_LAYOUT)
    for (parts, name, _), (other, other_name, path) in zip(real, real[1:]):
        if other == parts:
            raise DataError(shown(path), f"class folders '{printable(name)}' and '{printable(other_name)}' are the "
                            f"same folder {why}", code=codes.IMAGE_FOLDER_LAYOUT)
        if other[:len(parts)] == parts:
            raise DataError(shown(path), f"class folder '{printable(other_name)}' is inside class folder "
                            f"'{printable(name)}' {why}", code=codes.IMAGE_FOLDER_LAYOUT)


def _no_classes(folder: Path) -> None:
    loose = sum(1 for e in _entries(folder) if e.name.lower().endswith(SUFFIXES) and _kind(e) == "file")
    held = f"holds {loose} image{'s' if loose != 1 else ''} but no class folders" if loose else \
        "holds no class folders"
    raise DataError(shown(folder), f"{held}: images(...) reads one subfolder of images per class, named after the "
                    f"class (e.g. {printable(folder.name)}/cat/1.png)", code=codes.IMAGE_FOLDER_LAYOUT)


def _known_classes(valid: Path, classes: list[str], trained: list[str]) -> None:
    unknown = [c for c in classes if c not in trained]
    if unknown:
        raise DataError(shown(valid / unknown[0]), f"class {_quoted(unknown)} of valid/ has no folder in train/: the "
                        "model can only learn the classes it trains on", code=codes.UNKNOWN_CLASS)


def _one_class_a_name(base: Path, names: list[str]) -> None:
    """Two folder names must not read as one class (a byte that is not UTF-8, and its \\xNN written out)."""
    labels: dict[str, str] = {}
    for name in names:
        label = os_text(name)
        if label in labels:
            raise DataError(shown(base), f"class folders '{printable(labels[label])}' and '{printable(name)}' are the "
                            f"same class ('{printable(label)}'): rename one (a byte that is not UTF-8 is read as "
                            "\\xNN)", code=codes.IMAGE_FOLDER_LAYOUT)
        labels[label] = name


def _distinct_classes(root: Path, labels: list[str]) -> None:
    """Class names that are all whole numbers are classes by number (as a category column's are),
    so two folders must not name the same number."""
    numbers: dict[int, str] = {}
    for label in labels:
        try:
            number = int(label)
        except ValueError:
            return
        if number in numbers:
            raise DataError(shown(root), f"class folders '{numbers[number]}' and '{label}' are the same class "
                            f"({number}): rename one", code=codes.IMAGE_FOLDER_LAYOUT)
        numbers[number] = label


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{printable(n)}'" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5
                                                                 else "")


def _suffixes() -> str:
    return ", ".join(SUFFIXES[:-1]) + f" or {SUFFIXES[-1]}"


# ---------------------------------------------------------------- decoding


class BrokenImage(Exception):
    """An image that cannot be decoded, and why (Pillow's words, or what the path is instead)."""


def decode(path: str | Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as Pillow decodes it, converted to `mode` ("gray": Pillow's "L", "rgb": "RGB") and
    resized to `size` (height, width, bilinear): uint8 (channels, height, width). Only the plugins
    of FORMATS are tried, whatever the file's name or first bytes."""
    image = _pillow()
    height, width = size
    with _open_file(path) as f:
        try:
            with image.open(f, formats=FORMATS) as img:
                if img.format not in _OPENED_AS:  # so that the decoder is the one of a format specc reads
                    raise BrokenImage(f"Pillow opened it as {img.format}, which specc does not read")
                # decodes the whole image (a damaged one fails here); one already in the mode is not copied
                img.load()
                if img.mode != PILLOW_MODES[mode]:
                    img = img.convert(PILLOW_MODES[mode])
                if img.size != (width, height):
                    img = img.resize((width, height), image.Resampling.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)
        except image.UnidentifiedImageError:
            raise BrokenImage(NOT_OURS) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, image.DecompressionBombError) as err:
            raise BrokenImage(printable(str(err)) or type(err).__name__) from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@functools.cache
def _pillow():
    """Pillow's Image module with the plugins of FORMATS registered, so that Image.open(formats=...)
    finds them all without Image.init, which imports every plugin Pillow has (imported once: each image's
    decode asks for it)."""
    from PIL import (BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin,  # noqa: F401 (imported to register)
                     PngImagePlugin, WebPImagePlugin)

    return Image


def _open_file(path: str | Path):
    """An image file opened for reading bytes: one of at most WHOLE_READ bytes read at once into memory,
    a larger one as a file. Anything but a regular file is a BrokenImage saying what it is: a device
    is never opened, and the file is opened without blocking and checked again, so that a FIFO put
    in its place in between cannot hang the read."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            found = os.fstat(fd)
            mode = found.st_mode
            if stat.S_ISREG(mode):
                if found.st_size <= WHOLE_READ:
                    try:
                        return io.BytesIO(_read_all(fd, found.st_size))
                    finally:
                        os.close(fd)
                os.set_blocking(fd, True)
                return os.fdopen(fd, "rb")
            os.close(fd)
    except OSError as err:
        raise BrokenImage(_nowhere(str(path)) if err.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR)
                          else _reason(err)) from None
    raise BrokenImage(f"is {file_kind(mode)}, not a regular file")


WHOLE_READ = 1 << 24  # bytes: an image file up to this size is read in one call and decoded from memory,
# where Pillow's many small reads from a file cost more than the decoding of a small image (MNIST's PNGs:
# 250 bytes, 9 reads); a larger one is read as Pillow asks, so that a huge file is refused by its header


def _read_all(fd: int, size: int) -> bytes:
    """The first `size` bytes of an open file (fewer where it has shrunk since its fstat)."""
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _decode_all(listing: Listing, source: ImagesSource) -> tuple[np.ndarray, tuple[tuple[str, str], ...]]:
    """Every image of the listing decoded, each into its own row, its share of the rows by each core the process
    may use (decode_share); one that cannot be is an error (the first in the listing's order), or skipped with
    skip_broken."""
    shape = (len(listing.files), *source.row_shape)
    workers = min(decode_workers(), max(1, len(listing.files) // DECODE_PART))
    if workers > 1 and forking_is_safe():
        pixels, problems = _decode_forked(listing, source, shape, workers)
    else:
        pixels = np.empty(shape, dtype=np.uint8)
        problems = decode_share(listing, source, pixels, range(len(listing.files)))
    if problems and not source.skip_broken:
        k = min(problems)
        raise _broken(listing.root / listing.files[k].relative, problems[k])
    keep = np.ones(len(listing.files), dtype=bool)
    keep[list(problems)] = False
    skipped = tuple((listing.files[k].relative, problems[k]) for k in sorted(problems))
    return (pixels if keep.all() else pixels[keep]), skipped


def decode_share(listing: Listing, source: ImagesSource, pixels: np.ndarray, rows) -> dict[int, str]:
    """Decode the images of `rows` into those rows of `pixels`: {row: why} of those that cannot be (without
    skip_broken, the first one ends the share: the listing's first broken image is then reported)."""
    problems: dict[int, str] = {}
    root = str(listing.root)  # joined as text: a pathlib join per image costs a tenth of a small image's decoding
    for k in rows:
        try:
            pixels[k] = decode(os.path.join(root, listing.files[k].relative), source.mode, source.size)
        except BrokenImage as err:
            problems[k] = str(err)
            if not source.skip_broken:
                break
    return problems


def forking_is_safe() -> bool:
    """Whether decoding may fork: a POSIX system, and a process with one thread and no torch yet (whose thread
    pools a fork would copy half-held). Decoding small images is Pillow's Python as much as its C, so threads
    wait on each other for the GIL (50,000 MNIST PNGs took 1.7 times as long on 2 threads as on 1); processes
    do not."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1 and "torch" not in sys.modules


def _decode_forked(listing: Listing, source: ImagesSource, shape, workers: int) -> tuple[np.ndarray, dict]:
    """decode_share on `workers` processes: this one and workers - 1 forked children, each its share of the
    rows (every workers-th part), into one anonymous shared mapping; a child says which of its images could
    not be decoded on a pipe, one JSON line each, and leaves with os._exit, running nothing of the parent's."""
    import mmap

    size = max(1, int(np.prod(shape)))
    shared = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    pixels = np.frombuffer(shared, dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)
    parts = [range(s, min(s + DECODE_PART, shape[0])) for s in range(0, shape[0], DECODE_PART)]
    shares = [[k for part in parts[w::workers] for k in part] for w in range(workers)]
    _pillow()  # imported before the fork: the children have it
    children = []
    try:
        for share in shares[1:]:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its share, what went wrong on the pipe, and out without cleanup
                code = 0
                try:
                    os.close(read_end)
                    found = decode_share(listing, source, pixels, share)
                    with os.fdopen(write_end, "w") as out:
                        out.write(json.dumps({str(k): why for k, why in found.items()}))
                except BaseException:  # a bug, or a signal: the parent sees the status
                    code = 70
                finally:
                    os._exit(code)
            os.close(write_end)
            children.append((pid, read_end))
        problems = decode_share(listing, source, pixels, shares[0])
        for pid, read_end in children:
            with os.fdopen(read_end) as got:
                text = got.read()
            _, status = os.waitpid(pid, 0)
            if status != 0:
                raise RuntimeError(f"an image-decoding process ended with status {status}")  # a bug, not the data
            problems.update({int(k): why for k, why in json.loads(text).items()})
        children = []
    finally:
        for pid, _ in children:  # an interrupted parent leaves no child behind
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
                os.waitpid(pid, 0)
    return np.array(pixels), problems


def decode_workers() -> int:
    """The threads that decode images: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this system (macOS): every core
        return max(1, os.cpu_count() or 1)


DECODE_PART = 256  # images a thread decodes at a time: few enough tasks that handing them out costs nothing


def _broken(path: Path, reason: str) -> DataError:
    return DataError(shown(path), f"cannot be decoded as an image: {reason} ({SKIP_NOTE})",
                     code=codes.UNDECODABLE_IMAGE)


def _every_class_kept(listing: Listing, kept: list[ImageFile], skipped) -> None:
    """A class whose every image was skipped is a class the model cannot learn."""
    left = {(f.valid, f.label) for f in kept}
    for f in listing.files:
        if (f.valid, f.label) not in left:
            part = ("valid" if f.valid else "train") if listing.own_split else ""
            count = sum(1 for g in listing.files if (g.valid, g.label) == (f.valid, f.label))
            raise DataError(shown(listing.root / part / f.label), f"class folder '{printable(f.label)}' holds no image "
                            f"that can be decoded ({count} skipped; the first: {printable(f.relative)}: "
                            f"{dict(skipped)[f.relative]})", code=codes.IMAGE_FOLDER_LAYOUT)


# ---------------------------------------------------------------- the cache


def cache_name(listing: Listing, source: ImagesSource) -> str:
    """The cache file of a folder decoded at a size and mode: `<folder>-<where>-<what>.npz`, where
    <where> hashes the folder, size and mode and <what> every image's path, size and mtime too
    (and the Pillow version, whose decoders and resizing give the pixels)."""
    import PIL

    where = hashlib.sha256(json.dumps([str(listing.root), list(source.size), source.mode]).encode()).hexdigest()
    what = hashlib.sha256(json.dumps([CACHE_VERSION, PIL.__version__, where, listing.own_split]).encode())
    for f in listing.files:
        what.update(json.dumps([f.relative, f.size, f.mtime_ns]).encode() + b"\n")
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", listing.root.name)[:40] or "folder"
    return f"{readable}-{where[:12]}-{what.hexdigest()[:24]}.npz"


def _read_cache(path: Path, listing: Listing, shape) -> tuple[np.ndarray, tuple[tuple[str, str], ...]] | None:
    """The pixels and skipped images a cache file holds, or None where it is missing, damaged, not a
    regular file (a link is not followed, a FIFO not waited on) or not of this listing: it is then
    decoded again and rewritten. Never unpickles, and allocates no more than the file holds."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        try:
            with zipfile.ZipFile(f) as z:
                return _cached(z, listing, shape, info.st_size)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, struct.error, NotImplementedError):
            return None


def _cached(z: zipfile.ZipFile, listing: Listing, shape,
            limit: int) -> tuple[np.ndarray, tuple[tuple[str, str], ...]] | None:
    """The arrays of an open cache file, each read only once its header matches this listing."""
    skipped = _cached_array(z, "skipped", "U", None, limit)
    reasons = _cached_array(z, "reasons", "U", skipped.shape, limit) if skipped is not None else None
    if reasons is None:
        return None
    gone = set(skipped.tolist())
    if len(gone) != len(skipped) or not gone <= {f.relative for f in listing.files}:
        return None
    expect = [f.relative for f in listing.files if f.relative not in gone]
    files = _cached_array(z, "files", "U", (len(expect),), limit)
    if files is None or files.tolist() != expect:
        return None
    pixels = _cached_array(z, "pixels", "u", (len(expect), *shape), limit)
    if pixels is None or pixels.dtype != np.uint8:
        return None
    return pixels, tuple(zip(skipped.tolist(), reasons.tolist()))


def _cached_array(z: zipfile.ZipFile, name: str, kind: str, shape, limit: int) -> np.ndarray | None:
    """One array of a cache file (np.savez's `<name>.npy`, stored uncompressed), or None unless its
    header says an array of numpy kind `kind` (no objects) and `shape` (any 1-d one for None) that
    the member holds exactly: the header is checked before the array is allocated."""
    member = z.getinfo(f"{name}.npy")
    if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & 0x1 or member.file_size > limit:
        return None  # compressed, encrypted (zipfile would ask for a password), or more than the file holds
    with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return None
        got, fortran, dtype = read_header(f)
        if fortran or dtype.hasobject or dtype.kind != kind or (got != shape if shape else len(got) != 1):
            return None
        if f.tell() + math.prod(got) * dtype.itemsize != member.file_size:  # claims more (or less) than it holds
            return None
        array = np.empty(got, dtype)
        view, done = memoryview(array.reshape(-1).view(np.uint8)), 0
        while done < len(view):  # in pieces: a read of the whole would hold a second copy
            n = f.readinto(view[done:done + (1 << 24)])
            if not n:
                return None
            done += n
    return array


def _write_cache(path: Path, pixels: np.ndarray, listing: Listing, skipped) -> None:
    """Write the cache file (np.savez: uncompressed, as _cached_array reads it) under a temporary
    name and rename it into place (a reader never sees half a file); remove the older caches of the
    same folder, size and mode. A cache that cannot be written is a warning: training goes on, and
    the next run decodes again."""
    gone = {relative for relative, _ in skipped}
    files = np.array([f.relative for f in listing.files if f.relative not in gone], dtype=str)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, pixels=pixels, files=files, skipped=np.array([s for s, _ in skipped], dtype=str),
                     reasons=np.array([r for _, r in skipped], dtype=str))
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so that a crash leaves the old file or the new
        os.replace(tmp, path)  # replaces whatever is at the name (a FIFO, a link), never what a link points to
        tmp = None
    except OSError as err:
        print(f"specc: warning: cannot write the image cache {printable(str(path))}: {_reason(err)}; set "
              "SPECC_CACHE to a folder that can be written", file=sys.stderr)
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    # The names hold only [A-Za-z0-9_.-], so the prefix is matched literally.
    for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.npz"):
        if old.name != path.name:
            try:
                old.unlink()
            except OSError:  # another run's, being replaced or removed: it is only a cache
                pass


# ---------------------------------------------------------------- reading a folder for training


def read_images(source: ImagesSource, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of an image folder: `image` (uint8 pixels, as npz arrays are read) and
    `label` (class folder names), divided by its train/ and valid/ folders or by the spec's split."""
    _images_fit(source)
    folder = load_images(source, split)
    columns = {IMAGE_COLUMN: folder.pixels, LABEL_COLUMN: folder.labels}
    if folder.valid is not None:
        train_idx, valid_idx = np.flatnonzero(~folder.valid), np.flatnonzero(folder.valid)
    else:
        train_idx, valid_idx = split_rows(len(folder.labels), split, folder.path)
    for warning in same_pixels(folder, train_idx, valid_idx, source.size):
        print(f"specc: warning: {warning}", file=sys.stderr)
    return ({c.name: columns[c.name][train_idx] for c in wanted},
            {c.name: columns[c.name][valid_idx] for c in wanted}, folder.path)


def same_pixels(folder: ImageFolder, train_idx: np.ndarray, valid_idx: np.ndarray, size) -> list[str]:
    """What decoding found of images that are one picture (the same pixels at the spec's size, whatever
    their files' bytes): a validation image the same as a training image (its metrics count it as unseen),
    and images of two classes the same (one picture, two labels). Warnings, not errors: a folder may mean
    them, and training goes on."""
    from specc.data.duplicates import equal_rows

    split = np.full(len(folder.labels), -1)  # -1: a row of neither split; 0 training, 1 validation
    split[train_idx], split[valid_idx] = 0, 1
    leaks, mixed = [], []
    for group in equal_rows(folder.pixels):
        group = group[split[group] >= 0]
        trained = group[split[group] == 0]
        if len(trained):
            leaks += [(int(row), int(trained[0])) for row in group[split[group] == 1]]
        mixed += [(int(row), int(group[0])) for row in group[1:] if folder.labels[row] != folder.labels[group[0]]]
    root = Path(folder.path)

    def named(row: int) -> str:
        return f"{shown(root / folder.names[row])} ('{printable(str(folder.labels[row]))}')"

    at = f"{size[0]}x{size[1]}"
    warnings = []
    if leaks:
        row, first = leaks[0]
        warnings.append(f"{len(leaks):,} validation image{'s are' if len(leaks) > 1 else ' is'} the same picture as "
                        f"a training image (the same pixels at {at}), which the validation metrics count as unseen; "
                        f"the first: {named(row)} and {named(first)}")
    if mixed:
        row, first = mixed[0]
        warnings.append(f"{len(mixed):,} image{'s are' if len(mixed) > 1 else ' is'} the same picture as an image of "
                        f"another class (the same pixels at {at}); the first: {named(row)} and {named(first)}")
    return warnings


# bytes a pixel takes while the data is prepared: decoded (uint8), split into the training and
# validation rows (a copy), and as the model's float32 input
PIXEL_BYTES = 1 + 1 + 4


def _images_fit(source: ImagesSource) -> None:
    """Before an image is decoded: the folder's images at the spec's size must fit in memory, as
    prepared (PIXEL_BYTES a number), else E307 at the source."""
    count = len(list_folder(source).files)
    per = math.prod(source.row_shape)
    need, available = count * per * PIXEL_BYTES, budget()
    if need <= available.bytes:
        return
    height, width = source.size
    raise SpecError([Diagnostic(
        codes.TOO_LARGE, f"the {count:,} images of {source.path.name}/ at {height}x{width} ({source.mode}) take "
        f"{shown_bytes(need)} once decoded, more than {available}", source.span,
        (f"{count:,} images of {per:,} numbers, {PIXEL_BYTES} bytes each: decoded (uint8), split into training "
         "and validation rows, and as float32 for the model", "choose a smaller size=(height, width)",
         BUDGET_NOTE))])
