"""A safetensors file's header, read and checked without torch: tensor names, dtypes and shapes,
so that `specc check` can vet an `init GROUP from RUN` before any training (the file format:
8 bytes of header length, little-endian; a JSON header; the tensors' bytes)."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header


class BadWeights(ValueError):
    """The file is not a readable safetensors file; the message says why, in a user's words."""


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) of a safetensors file, after checking that every tensor's
    bytes are inside the file. Raises BadWeights."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise BadWeights(err.strerror or str(err)) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadWeights("it is not a regular file")
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise BadWeights(f"it is {len(prefix)} bytes long, too short for a safetensors file")
            size = int.from_bytes(prefix, "little")
            if size > min(_MAX_HEADER, info.st_size - 8):
                raise BadWeights("its header runs past the end of the file: the file is cut short, or not a safetensors file")
            text = f.read(size)
    except OSError as err:
        raise BadWeights(err.strerror or str(err)) from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadWeights("its header is not JSON: the file is damaged, cut short, or not a safetensors file") from None
    if not isinstance(header, dict):
        raise BadWeights("its header is not a JSON object")
    data_bytes = info.st_size - 8 - size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = dtype in _ITEM_BYTES and all(isinstance(d, int) and d >= 0 for d in shape) \
                and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise BadWeights(f"its entry for '{name}' is malformed")
        if end - begin != math.prod(shape) * _ITEM_BYTES[dtype]:
            raise BadWeights(f"'{name}' has {end - begin} bytes for shape {tuple(shape)} of {dtype}")
        if end > data_bytes:
            raise BadWeights(f"'{name}' runs past the end of the file: it is cut short")
        tensors[name] = (dtype, tuple(shape))
    return tensors
