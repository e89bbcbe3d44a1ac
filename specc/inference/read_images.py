"""Predict's and evaluate's reader of images, for a model trained on an images(...) folder: an
image file or a folder of them (predict), or a folder laid out as training's, one subfolder per class
(evaluate) -> batches of uint8 pixels decoded as training decoded its folder (Pillow, the mode and
size the model records), a batch at a time, so a large folder is never in memory at once."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specc.data.files import check_regular
from specc.data.images import SUFFIXES as IMAGE_SUFFIXES, BrokenImage, Listing, decode, images_below, list_folder
from specc.data.split import split_from_json, split_rows
from specc.data.table import shown_names
from specc.inference.columns import IMAGE_BATCH, Ask, Inputs, class_key
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError, os_text, printable
from specc.language.spec import IMAGE_COLUMN, IMAGE_MODES, ImagesSource


@dataclass(frozen=True, slots=True)
class ImageReading:
    """How a model trained on an images(...) folder takes an image: as its input `column`, decoded
    in `mode` and resized to `size` (height, width), as training decoded the folder."""

    column: str
    mode: str
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image as the model takes it: (channels, height, width)."""
        return (IMAGE_MODES[self.mode], *self.size)


def image_reading(session) -> ImageReading:
    """How the model reads images (its metadata's specc.reading), checked against its inputs."""
    opts = session.reading
    model = session.where
    mode, size = opts.get("mode"), opts.get("size")
    if mode not in IMAGE_MODES or not isinstance(size, list) or len(size) != 2 or \
            not all(isinstance(d, int) and d > 0 for d in size):
        raise DataError(str(model), f"its metadata specc.reading ({json.dumps(opts)}) has no image mode and size "
                        "as specc writes them", code=codes.BAD_MODEL_FILE)
    reading = ImageReading(IMAGE_COLUMN, mode, (size[0], size[1]))
    kind, shape = session.inputs.get(IMAGE_COLUMN), session.shapes.get(IMAGE_COLUMN, [])
    if list(session.inputs) != [IMAGE_COLUMN] or kind != "tensor(uint8)" or shape[1:] != list(reading.shape):
        got = ", ".join(f"'{n}': {t} {session.shapes[n]}" for n, t in session.inputs.items())
        raise DataError(str(model), f"reads {mode} images of {size[0]}x{size[1]} by its metadata, but its inputs are "
                        f"not one uint8 batch 'image' (N, {', '.join(map(str, reading.shape))}): {got}",
                        code=codes.BAD_MODEL_FILE)
    return reading


def image_files(path: Path) -> tuple[list[Path], list[str]]:
    """The images `path` names, with each one's name for the output: the file itself (named as
    given), or every image in a folder and the folders below it (named by their path below it),
    sorted by that path; hidden files and folders are left out, a folder linked twice read once, and
    links are followed only within the folder (see images_below). A name that is not UTF-8 is
    written with \\xNN for each byte that is not (os_text)."""
    if not path.is_dir():
        check_regular(path)
        return [path], [os_text(str(path))]
    found = [relative for relative, _, _, _ in images_below(path, path)]
    if not found:
        raise DataError(printable(str(path)), f"holds no images (files ending {', '.join(IMAGE_SUFFIXES)}, in it or "
                        "in folders below it)", code=codes.IMAGE_FOLDER_LAYOUT)
    return [path / relative for relative in found], [os_text(relative) for relative in found]


def decode_images(paths: list[Path], reading: ImageReading) -> np.ndarray:
    """Images decoded as training decoded its folder (Pillow, the model's mode and size): uint8
    (N, C, H, W); one that cannot be decoded is an error naming it and Pillow's reason."""
    batch = np.empty((len(paths), *reading.shape), dtype=np.uint8)
    for k, path in enumerate(paths):
        try:
            batch[k] = decode(path, reading.mode, reading.size)
        except BrokenImage as err:
            raise DataError(printable(str(path)), f"cannot be decoded as an image: {err}",
                            code=codes.UNDECODABLE_IMAGE) from None
    return batch


@dataclass
class ImageInputs(Inputs):
    """Image files the model reads, decoded `per_run` at a time as they are run (see batches), with
    each one's name for predict's `file` column (and its class, for evaluate: `target`)."""

    reading: ImageReading | None = None
    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    per_run: int = IMAGE_BATCH

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> DataError:
        row = index[0] if isinstance(index, tuple) else index
        return DataError(printable(str(self.paths[row])) if not whole else self.path, message, code=code)

    def batches(self, size: int):
        """The images, `per_run` at a time whatever `size` (a row of pixels is larger than a row of ids)."""
        for s in range(0, self.rows, self.per_run):
            yield {self.reading.column: decode_images(self.paths[s:s + self.per_run], self.reading)}

    def leading(self) -> tuple[list[str], list]:
        """The column predict writes before the outputs: each image's name (see image_files)."""
        return ["file"], [self.names]


def read_images(path: Path, session, ask: Ask) -> ImageInputs:
    """For predict, the images `path` names (see image_files); for evaluate (`ask.target`), the
    images of a folder of class folders with their classes (see class_folder)."""
    reading = image_reading(session)
    if ask.target:
        return class_folder(path, session, reading, ask)
    if ask.delimiter is not None or ask.arrays:
        raise UsageError(f"--{'delimiter' if ask.delimiter is not None else 'array'}: the model reads images, "
                         f"and {path} is {'a folder of them' if path.is_dir() else 'read as one'}")
    paths, names = image_files(path)
    return ImageInputs({}, len(paths), path=str(path), reading=reading, paths=paths, names=names,
                       per_run=ask.image_batch)


def class_folder(folder: Path, session, reading: ImageReading, ask: Ask) -> ImageInputs:
    """Every image of a folder laid out as training's (one subfolder per class, or train/ and
    valid/ folders of them), with each one's class (its folder's name). A split takes the folder's
    own train/ or valid/ images, else the spec's split of them in training's order. A class the
    model does not know is an error before any image is decoded."""
    if not folder.is_dir():
        raise DataError(str(folder), "is not a folder: the model reads images, so evaluate takes a folder with one "
                        "subfolder of images per class, as the model was trained on (or an .npz with arrays "
                        f"'{reading.column}' and '{ask.target}')", code=codes.MISSING_INPUT)
    listing = list_folder(ImagesSource(folder, reading.size, reading.mode, None))
    meta = session.metadata
    known_classes(listing, json.loads(meta["specc.vocabs"])[meta["specc.target"]])
    files = list(listing.files)
    if ask.split != "all" and listing.own_split:
        files = [f for f in files if f.valid == (ask.split == "valid")]
    elif ask.split != "all":
        split = split_from_json(json.loads(meta.get("specc.split", "null")))
        train_idx, valid_idx = split_rows(len(files), split, str(folder))
        files = [files[k] for k in (valid_idx if ask.split == "valid" else train_idx)]
    return ImageInputs({}, len(files), target=np.array([f.label for f in files], dtype=object), path=str(folder),
                       split_done=True, reading=reading, paths=[listing.root / f.relative for f in files],
                       per_run=ask.image_batch)


def known_classes(listing: Listing, vocab: dict) -> None:
    """Every class folder must name a class of the model: one it never learned cannot be scored."""
    classes = vocab["values"]
    known = {int(v) if vocab["integer"] else v for v in classes}
    unknown = Counter(f.label for f in listing.files if class_key(f.label, vocab["integer"]) not in known)
    if not unknown:
        return
    first = next(f for f in listing.files if f.label in unknown)
    part = ("valid" if first.valid else "train") if listing.own_split else ""
    where = listing.root / part / first.label if len(unknown) == 1 else listing.root
    listed = ", ".join(f"'{printable(c)}' ({n} image{'s' if n > 1 else ''})" for c, n in sorted(unknown.items())[:5])
    if len(unknown) > 5:
        listed += f" and {len(unknown) - 5} more"
    hints = [f"'{printable(close[0])}' for '{printable(label)}'" for label in sorted(unknown)[:5]
             if (close := difflib.get_close_matches(label, [str(c) for c in classes], n=1, cutoff=0.75))]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    count = len(unknown)
    raise DataError(printable(str(where)), f"class folder{'s' if count > 1 else ''} {listed} "
                    f"{'are' if count > 1 else 'is'} not {'classes' if count > 1 else 'a class'} of the model: its "
                    f"classes are {shown_names([printable(str(c)) for c in classes])}{hint}", code=codes.UNKNOWN_CLASS)
