"""Image folders: an images(...) source -> its images as uint8 pixels (N, C, H, W) with each one's
class (its class folder's name), decoded once with Pillow and cached (see cache_dir)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specc import codes
from specc.data.files import NOT_FOUND_NOTE, open_binary
from specc.diagnostics import DataError, Diagnostic, SpecError
from specc.spec import ImagesSource

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # compared in lower case
PILLOW_MODES = {"gray": "L", "rgb": "RGB"}
CACHE_VERSION = 1  # bump when the cache file's contents change
SKIP_NOTE = "skip_broken=true in images(...) skips the images that cannot be decoded"


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One image of the folder: its path below the folder ('/'-separated), its class, and what
    the cache key takes of it (a changed file has another size or modification time)."""

    relative: str
    label: str
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


def shown(path) -> str:
    """A path as an error names it: relative to the working folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
        raise SpecError([Diagnostic(codes.SPLIT_IN_DATA, f"{source.path.name}/ has its own train/ and valid/ "
                                    "folders", split.span,
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
              f"decoded (skip_broken=true); the first: {listing.root / relative}: {reason}", file=sys.stderr)
    labels = np.array([f.label for f in kept], dtype=str)
    valid = np.array([f.valid for f in kept], dtype=bool) if listing.own_split else None
    return ImageFolder(str(listing.root), pixels, labels, valid, skipped)


# ---------------------------------------------------------------- listing


def list_folder(source: ImagesSource) -> Listing:
    """The class folders and their images: one subfolder per class, or train/ and valid/ folders
    that each hold one subfolder per class. Hidden files and folders are left out."""
    root = source.path
    _check_folder(root, source.span)
    folders = _subfolders(root)
    split_roots = [name for name in ("train", "valid") if name in folders and _subfolders(root / name)]
    if len(split_roots) == 1:
        there, missing = split_roots[0], ("valid" if split_roots[0] == "train" else "train")
        raise DataError(shown(root), f"has a {there}/ folder of class folders but no {missing}/ folder of them: give "
                        f"both, or point the source at {root.name}/{there}/ (the spec's valid split then divides "
                        "its images)", code="D111")
    own_split = len(split_roots) == 2
    files = []
    for part in ("train", "valid") if own_split else ("",):
        base = root / part if part else root
        classes = _subfolders(base)
        if not classes:
            _no_classes(base)
        if part == "valid":
            _known_classes(base, classes, _subfolders(root / "train"))
        empty, by_class = [], []
        for label in classes:
            found = _images_below(base / label, root)
            if not found:
                empty.append(label)
            by_class.append([ImageFile(relative, label, part == "valid", size, mtime)
                             for relative, size, mtime in found])
        if empty:
            raise DataError(shown(base / empty[0]) if len(empty) == 1 else shown(base),
                            f"class folder{'s' if len(empty) > 1 else ''} {_quoted(empty)} "
                            f"{'hold' if len(empty) > 1 else 'holds'} no images (files ending {_suffixes()})",
                            code="D111")
        # Round robin: the first image of every class, then the second of every class, ... so that
        # train_rows, rows(...) and last(...) take every class, and the first rows show them all.
        files += [images[k] for k in range(max(map(len, by_class))) for images in by_class if k < len(images)]
    _distinct_classes(root, sorted({f.label for f in files}))
    return Listing(root, tuple(files), own_split)


def _check_folder(root: Path, span) -> None:
    """The folder the spec names must be there and be a folder (E208 at its path in the spec)."""
    try:
        mode = os.stat(root).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SpecError([Diagnostic(codes.DATA_FILE, f"data folder not found: {root}", span,
                                        (NOT_FOUND_NOTE,))]) from None
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data folder cannot be read: {root}", span,
                                    ((err.strerror or str(err)).lower(),))]) from None
    if not stat.S_ISDIR(mode):
        raise SpecError([Diagnostic(codes.DATA_FILE, f"data folder is not a folder: {root}", span,
                                    ("images(...) reads a folder with one subfolder of images per class",))])


def _entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries but hidden ones, by name; an unreadable folder is an error naming it."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise DataError(shown(folder), f"cannot be read: {(err.strerror or str(err)).lower()}", code="D101") from None


def _subfolders(folder: Path) -> list[str]:
    """The names of a folder's subfolders (symbolic links to folders too), sorted."""
    return [e.name for e in _entries(folder) if e.is_dir()]


def _images_below(folder: Path, root: Path) -> list[tuple[str, int, int]]:
    """(path relative to root, size, modification time) of every image in a class folder and the
    folders below it, sorted by path. A folder reached twice through links is read once."""
    found: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()

    def walk(d: Path) -> None:
        try:
            info = os.stat(d)
        except OSError as err:
            raise DataError(shown(d), f"cannot be read: {(err.strerror or str(err)).lower()}", code="D101") from None
        if (info.st_dev, info.st_ino) in seen:  # a link back up the tree
            return
        seen.add((info.st_dev, info.st_ino))
        for e in _entries(d):
            if e.is_dir():
                walk(Path(e.path))
            elif e.name.lower().endswith(SUFFIXES):
                try:
                    st = e.stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:  # a dangling link: decoding reports it (or skips it)
                    size, mtime = -1, 0
                found.append((Path(e.path).relative_to(root).as_posix(), size, mtime))

    walk(folder)
    return sorted(found)


def _no_classes(folder: Path) -> None:
    loose = sum(1 for e in _entries(folder) if e.is_file() and e.name.lower().endswith(SUFFIXES))
    held = f"holds {loose} image{'s' if loose != 1 else ''} but no class folders" if loose else \
        "holds no class folders"
    raise DataError(shown(folder), f"{held}: images(...) reads one subfolder of images per class, named after the "
                    f"class (e.g. {folder.name}/cat/1.png)", code="D111")


def _known_classes(valid: Path, classes: list[str], trained: list[str]) -> None:
    unknown = [c for c in classes if c not in trained]
    if unknown:
        raise DataError(shown(valid / unknown[0]), f"class {_quoted(unknown)} of valid/ has no folder in train/: the "
                        "model can only learn the classes it trains on", code="D111")


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
                            f"({number}): rename one", code="D111")
        numbers[number] = label


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _suffixes() -> str:
    return ", ".join(SUFFIXES[:-1]) + f" or {SUFFIXES[-1]}"


# ---------------------------------------------------------------- decoding


class _Broken(Exception):
    """An image that cannot be decoded, and why (Pillow's words)."""


def decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as Pillow decodes it, converted to `mode` ("gray": Pillow's "L", "rgb": "RGB") and
    resized to `size` (height, width, bilinear): uint8 (channels, height, width)."""
    from PIL import Image, UnidentifiedImageError

    try:
        info = os.stat(path)
    except OSError as err:
        raise _Broken((err.strerror or str(err)).lower()) from None
    if not stat.S_ISREG(info.st_mode):
        raise _Broken("not a regular file")
    height, width = size
    with open_binary(path) as f:
        try:
            with Image.open(f) as img:
                img = img.convert(PILLOW_MODES[mode])  # decodes the whole image: a damaged one fails here
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)
        except UnidentifiedImageError:
            raise _Broken("Pillow cannot identify it as an image") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
            raise _Broken(str(err) or type(err).__name__) from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _decode_all(listing: Listing, source: ImagesSource) -> tuple[np.ndarray, tuple[tuple[str, str], ...]]:
    """Every image of the listing decoded; one that cannot be is an error, or skipped with skip_broken."""
    pixels = np.empty((len(listing.files), *source.row_shape), dtype=np.uint8)
    keep = np.ones(len(listing.files), dtype=bool)
    skipped = []
    for k, f in enumerate(listing.files):
        try:
            pixels[k] = decode(listing.root / f.relative, source.mode, source.size)
        except _Broken as err:
            if not source.skip_broken:
                raise _broken(listing.root / f.relative, str(err)) from None
            keep[k] = False
            skipped.append((f.relative, str(err)))
    return (pixels if keep.all() else pixels[keep]), tuple(skipped)


def _broken(path: Path, reason: str) -> DataError:
    return DataError(shown(path), f"cannot be decoded as an image: {reason} ({SKIP_NOTE})", code="D110")


def _every_class_kept(listing: Listing, kept: list[ImageFile], skipped) -> None:
    """A class whose every image was skipped is a class the model cannot learn."""
    left = {(f.valid, f.label) for f in kept}
    for f in listing.files:
        if (f.valid, f.label) not in left:
            part = ("valid" if f.valid else "train") if listing.own_split else ""
            count = sum(1 for g in listing.files if (g.valid, g.label) == (f.valid, f.label))
            raise DataError(shown(listing.root / part / f.label), f"class folder '{f.label}' holds no image that can "
                            f"be decoded ({count} skipped; the first: {f.relative}: {dict(skipped)[f.relative]})",
                            code="D111")


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
    """The pixels and skipped images a cache file holds, or None where it is missing, damaged or
    not of this listing (it is then decoded again and rewritten). Never unpickles."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array
        return None
    try:
        with z:
            pixels, files, skipped, reasons = z["pixels"], z["files"], z["skipped"], z["reasons"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if any(a.ndim != 1 or a.dtype.kind != "U" for a in (files, skipped, reasons)) or len(skipped) != len(reasons):
        return None
    gone = set(skipped.tolist())
    expect = [f.relative for f in listing.files if f.relative not in gone]
    if pixels.dtype != np.uint8 or pixels.shape != (len(expect), *shape) or files.tolist() != expect \
            or not gone <= {f.relative for f in listing.files}:
        return None
    return pixels, tuple(zip(skipped.tolist(), reasons.tolist()))


def _write_cache(path: Path, pixels: np.ndarray, listing: Listing, skipped) -> None:
    """Write the cache file under a temporary name and rename it into place (a reader never sees
    half a file); remove the older caches of the same folder, size and mode. A cache that cannot
    be written is a warning: training goes on, and the next run decodes again."""
    gone = {relative for relative, _ in skipped}
    files = np.array([f.relative for f in listing.files if f.relative not in gone], dtype=str)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, pixels=pixels, files=files, skipped=np.array([s for s, _ in skipped], dtype=str),
                     reasons=np.array([r for _, r in skipped], dtype=str))
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        print(f"specc: warning: cannot write the image cache {path}: {(err.strerror or str(err)).lower()}; set "
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
