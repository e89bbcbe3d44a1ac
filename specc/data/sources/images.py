"""The images(...) source: a folder of images, one subfolder per class, decoded by Pillow in `mode`
and resized to `size` (specc.data.images). It gives two columns: `image`, the pixels, an input, and
`label`, the class folder's name, the target."""

from __future__ import annotations

from specc.data.sources.base import Choice, FilePath, Flag, ImageSize, SourceDef
from specc.language import codes
from specc.language.diagnostics import Diagnostic, suggest
from specc.language.spec import CATEGORY, FLOAT, IMAGE_COLUMN, LABEL_COLUMN, Column, ImagesSource

IMAGE_SIDE_MAX = 8192  # pixels: a larger image is surely a mistake in `size`


def _make(path, args: dict, span) -> ImagesSource:
    return ImagesSource(path, args["size"], args["mode"], span, args["skip_broken"])


def _columns(source: ImagesSource, inputs: tuple, target: Column) -> tuple[list, tuple]:
    """The source gives `image` (pixels (channels, height, width)), an input, and `label` (the class
    folder's name), the target. With the inputs as the model block is to see them: `image` at the
    source's shape."""
    shape = source.row_shape
    image = f"{IMAGE_COLUMN}: float({', '.join(str(d) for d in shape)}) / 255"
    label = f"{LABEL_COLUMN}: category"
    declare = f"declare inputs = [{image}] and target = {label}"
    gives = f"images(...) gives two columns: {IMAGE_COLUMN} (the pixels) and {LABEL_COLUMN} (the class folder's name)"
    problems, fixed = [], []
    for col in inputs:
        if col.name == IMAGE_COLUMN and (col.kind != FLOAT or col.shape != shape):
            found = ("a category" if col.kind == CATEGORY else "one value per row" if not col.shape else
                     f"shape ({', '.join(str(d) for d in col.shape)})")
            channels = f"{shape[0]} channel{'s' if shape[0] > 1 else ''}"
            problems.append(Diagnostic(codes.BAD_COLUMN, f"column '{IMAGE_COLUMN}' holds images of shape {shape} "
                                       f"(mode=\"{source.mode}\": {channels}; size={source.size}), but the spec "
                                       f"declares {found}", col.span, (f"declare it as {image}",)))
            col = Column(col.name, FLOAT, col.span, shape, col.scale)
        elif col.name == LABEL_COLUMN:
            problems.append(Diagnostic(codes.BAD_COLUMN, f"column '{LABEL_COLUMN}' is each image's class: it is the "
                                       "target, not an input", col.span, (declare,)))
        elif col.name != IMAGE_COLUMN:
            problems.append(Diagnostic(codes.UNKNOWN_NAME, f"unknown column '{col.name}'", col.span,
                                       (*suggest(col.name, (IMAGE_COLUMN,)), gives, declare)))
        fixed.append(col)
    return problems + _target(target, inputs, label, declare, gives), tuple(fixed)


def _target(target: Column, inputs: tuple, label: str, declare: str, gives: str) -> list[Diagnostic]:
    """The target is `label`, a category."""
    if target.name == LABEL_COLUMN and target.kind != CATEGORY:
        return [Diagnostic(codes.BAD_COLUMN, f"column '{LABEL_COLUMN}' holds the class folder names: it is a "
                           "category", target.span, (f"declare it as target = {label}",))]
    if target.name == IMAGE_COLUMN:
        if all(col.name != IMAGE_COLUMN for col in inputs):  # else E103 says it is both
            return [Diagnostic(codes.BAD_COLUMN, f"column '{IMAGE_COLUMN}' holds the pixels: it is an input, not "
                               "the target", target.span, (declare,))]
        return []
    if target.name != LABEL_COLUMN:
        return [Diagnostic(codes.UNKNOWN_NAME, f"unknown column '{target.name}'", target.span,
                           (*suggest(target.name, (LABEL_COLUMN,)), gives, declare))]
    return []


def _read(data, wanted) -> tuple[dict, dict, str]:
    from specc.data.images import read_images

    return read_images(data.source, wanted, data.valid)


def _preview(spec, columns: tuple, n: int) -> tuple[dict, dict, str]:
    from specc.data.images import read_images

    return read_images(spec.data.source, columns, spec.data.valid)


def _reading(source: ImagesSource) -> dict:
    """Decoded in `mode`, resized to `size` (height, width): predict decodes new images so."""
    return {"format": "images", "size": list(source.size), "mode": source.mode}


def _reader(path, session, ask):
    from specc.inference.read_images import read_images

    return read_images(path, session, ask)


SOURCE = SourceDef(
    "images", "a folder of images, one subfolder per class (or train/ and valid/ of them), decoded by Pillow",
    (FilePath(), ImageSize("size", IMAGE_SIDE_MAX, "(height, width) each image is resized to, or one number"),
     Choice("mode", {"gray": "one channel (Pillow's \"L\")", "rgb": "three channels"}, "rgb",
            {"l": ("gray", "Pillow's \"L\"")}, "the channels each image is converted to"),
     Flag("skip_broken", False, "an image that cannot be decoded is left out (with a warning), not an error")),
    make=_make, columns=_columns, read=_read, preview=_preview, reading=_reading, reader=_reader,
    pixels=IMAGE_COLUMN, table=False)
