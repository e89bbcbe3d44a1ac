"""The column typing: the one rule that decides what input an exported model accepts. A reader (a
CSV's, an .npz's, a Parquet file's, serve's JSON) gives each input column as a raw array; `typed`
makes it the array the model takes (ids as int64, categories as text, numbers as float32, pixels
as uint8) or reports the first value it cannot be, where the reader says that value is (`Inputs`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from specc.data.arrays import INT64_MAX, INT64_MIN
from specc.data.files import describe_array, first_not_text
from specc.data.sets import At
from specc.language import codes
from specc.language.diagnostics import DataError, printable
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, SET_PAD_ID, SET_PAD_TEXT, Column

NUMPY = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(string)": object,
         "tensor(double)": np.float64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}
IMAGE_BATCH = 256  # images decoded and run at a time: a folder's pixels are never all held at once


@dataclass(frozen=True, slots=True)
class Ask:
    """What predict or evaluate asks of a reader: the target's values too (evaluate), the rows of a
    split ('all', 'train', 'valid'), the CSV delimiter and .npz arrays the user named, a column to
    keep as given (predict: the target's, written back beside the prediction), images at a time, and
    the columns the spec's split reads to pick the split's rows (per_user's users, ...)."""

    target: str | None = None
    split: str = "all"
    delimiter: str | None = None
    arrays: dict[str, str] | None = None
    keep: str | None = None
    image_batch: int = IMAGE_BATCH
    split_columns: tuple = ()  # specc.language.spec Columns: each read as its kind, into Inputs.split_values


@dataclass
class Inputs:
    """What a file gave the model: the feed, typed as the model's inputs want it; the target's
    values as read (evaluate); the inputs as the user wrote them where the feed differs (an id past
    int64 fed as an unknown id); notes for the user. Each reader's subclass says where a value is
    (`at`), for messages."""

    feed: dict[str, np.ndarray]
    rows: int
    target: np.ndarray | None = None
    shown: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    arrays: dict[str, str] = field(default_factory=dict)  # an .npz's: column -> array name
    path: str = ""
    split_done: bool = False  # the rows are already those of the split asked for (x_valid, valid/)
    order: np.ndarray | None = None  # after take(): the file's row of each row kept
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # a column predict writes back as given (the target's)
    split_values: dict[str, np.ndarray] = field(default_factory=dict)  # Ask.split_columns' values, as read

    def error(self, index, column: str, message: str, code: codes.Code, whole: bool = False) -> Exception:
        """An error about a value of a column (row `index`, or an element's index tuple) where the
        file has it; `whole`: about the whole column."""
        if self.order is not None:  # a row of a split: the file's row
            row = int(self.order[index[0] if isinstance(index, tuple) else index])
            index = (row, *index[1:]) if isinstance(index, tuple) else row
        return self.at(index, column, message, code, whole)

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> Exception:
        """The error at the file's row `index` (or element), as the reader places it."""
        return DataError(self.path, message, column=column, code=code)

    def take(self, rows: np.ndarray) -> None:
        """Keep only these rows (a split), in this order."""
        self.feed = {k: v[rows] for k, v in self.feed.items()}
        self.shown = {k: v[rows] for k, v in self.shown.items()}
        if self.target is not None:
            self.target = self.target[rows]
        self.order = rows if self.order is None else self.order[rows]
        self.rows = len(rows)

    def batches(self, size: int):
        """The feed, `size` rows at a time."""
        for s in range(0, self.rows, size):
            yield {k: v[s:s + size] for k, v in self.feed.items()}

    def leading(self) -> tuple[list[str], list]:
        """The columns predict writes before the outputs: the inputs of one value a row as given,
        then the column kept as given (the target's, where the file has one)."""
        names = [name for name, values in self.feed.items() if values.ndim == 1]
        return names + list(self.kept), [self.shown.get(name, self.feed[name]) for name in names] + \
            list(self.kept.values())


def row_shape(session, column: str) -> tuple | None:
    """The shape of one row of an input (None where the model does not fix it); () for the target."""
    shape = session.shapes.get(column)
    if shape is None:
        return ()
    rest = tuple(shape[1:])
    return rest if all(isinstance(d, int) for d in rest) else None


def column_kind(session, column: str) -> str:
    """How a reader reads an input column: CATEGORIES where the model takes sets of ids, CATEGORY where it
    takes ids or text, else FLOAT (numbers; pixels, which come as numbers)."""
    if declared_inputs(session).get(column, {}).get("kind") == CATEGORIES:
        return CATEGORIES
    return CATEGORY if NUMPY.get(session.inputs[column], object) in (np.int64, object) else FLOAT


def declared_inputs(session) -> dict[str, dict]:
    """The model's input columns as its export recorded them (specc.inputs: kind, shape, and a float vector's
    columns or a set's separator), by name; {} for a model that records none."""
    return {entry["name"]: entry for entry in json.loads(session.metadata.get("specc.inputs", "[]"))}


def file_columns_of(session, name: str) -> list[str]:
    """The columns of a file that the model's input `name` is read from: itself, or a float vector's columns."""
    return list(declared_inputs(session).get(name, {}).get("columns") or [name])


def read_as(session, name: str, shape: tuple = ()) -> list[Column]:
    """The columns a reader reads from a file for the model's input `name`, each as its kind: a float vector of
    several columns as those numbers, a set column with its separator and largest set."""
    entry = declared_inputs(session).get(name, {})
    if entry.get("columns"):
        return [Column(part, FLOAT, None) for part in entry["columns"]]
    kind = column_kind(session, name)
    if kind == CATEGORIES:
        return [Column(name, kind, None, sep=entry["sep"], max_size=entry["max_size"])]
    return [Column(name, kind, None, shape)]


def fed(session, name: str, columns: dict, got: Inputs) -> np.ndarray:
    """The model's input `name` made from a reader's columns as read (`columns`, by name): a float vector of
    several columns stacked side by side; anything else typed (typed)."""
    parts = declared_inputs(session).get(name, {}).get("columns")
    if parts:
        return typed(session, name, np.stack([np.asarray(columns[p], dtype=np.float64) for p in parts], axis=1), got)
    return typed(session, name, columns[name], got)


def typed(session, name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """One input's values as the model takes them, or an error at the first value that cannot be."""
    if column_kind(session, name) == CATEGORIES:  # one tuple of ids a row -> (N, L), padded
        integer = NUMPY.get(session.inputs[name], object) is np.int64
        return padded_sets(values, integer, lambda k, message, code: got.error(k, name, message, code=code))
    kind = NUMPY.get(session.inputs[name], object)
    if kind in (np.float32, np.float64):
        return numbers(session, name, values, got, kind)
    if kind is np.int64:
        return ids(session, name, values, got)
    if kind is np.uint8:
        return pixels(name, values, got)
    if kind is object:
        return texts(name, values, got)
    return values.astype(kind)


def numbers(session, name: str, values: np.ndarray, got: Inputs, dtype) -> np.ndarray:
    """Numbers, finite; NaN (a missing value) only where the model fills or flags it."""
    if values.dtype.kind not in "iufb":
        raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes numbers",
                        code=codes.WRONG_TYPE, whole=True)
    wide = values.astype(np.float64)
    with np.errstate(over="ignore"):  # a number too large for float32 becomes inf: reported below
        out = wide.astype(dtype)
    nan = np.isnan(wide)
    if nan.any() and name in session.nan_safe:  # (asked only then: it reads the graph)
        nan[...] = False
    bad = nan | np.isinf(out)  # inf as given, or a number too large for float32
    if not bad.any():
        return out
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    value = wide[index]
    if np.isnan(value):
        message = (f"expected a number, found a missing value (NaN); the model was not trained to fill "
                   f"missing values of '{name}' (fill_missing)")
    elif np.isinf(value):
        message = f"expected a finite number, found {value}"
    else:
        message = f"{value:g} is too large for the model's float32 input"
    raise got.error(index, name, message, code=codes.BAD_NUMBER)


def pixels(name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """An image model's pixels as uint8: whole numbers from 0 to 255 (of any numeric type), or an
    error at the first that is not one."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind not in "iuf":
        raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes pixels "
                        "(whole numbers from 0 to 255)", code=codes.WRONG_TYPE, whole=True)
    with np.errstate(invalid="ignore"):
        bad = ~((values >= 0) & (values <= 255) & (values == np.floor(values)))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise got.error(index, name, f"expected a pixel (a whole number from 0 to 255), found {values[index]}",
                        code=codes.BAD_NUMBER)
    return values.astype(np.uint8)


def ids(session, name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """Whole-number ids as int64: integers, floats without a fraction, text of a whole number (an
    object array may hold any of these, as JSON gives them). One past int64 was never seen in
    training, so it is fed as an id the model maps to the unknown row (and shown as given);
    anything else is an error at the first value that is not a whole number."""
    kind = values.dtype.kind
    if kind == "i":
        return values.astype(np.int64)
    far = np.zeros(len(values), dtype=bool)
    if kind == "u":
        far = values > INT64_MAX
        out = np.where(far, 0, values).astype(np.int64)
    elif kind == "f":
        whole_ = np.isfinite(values) & (values == np.floor(values))
        if not whole_.all():
            k = int(np.argmax(~whole_))
            raise got.error(k, name, f"expected a whole number (the model's ids are integers), found {values[k]}",
                            code=codes.WRONG_TYPE)
        far = (values >= 2.0 ** 63) | (values < -2.0 ** 63)
        out = np.where(far, 0, values).astype(np.int64)
    elif kind in "OUS":
        out = np.empty(len(values), dtype=np.int64)
        for k, value in enumerate(values):
            number = whole(value)
            if number is None:
                raise got.error(k, name, f"expected a whole number (the model's ids are integers), found "
                                f"{shown_value(value)}", code=codes.WRONG_TYPE)
            if INT64_MIN <= number <= INT64_MAX:
                out[k] = number
            else:
                far[k] = True
    else:
        raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes whole-number ids",
                        code=codes.WRONG_TYPE, whole=True)
    if far.any():
        _unknown_ids(session, name, values, far, out, got)
    return out


def _unknown_ids(session, name: str, values: np.ndarray, far: np.ndarray, out: np.ndarray, got: Inputs) -> None:
    """Ids past int64 fed as one the model never saw (in `out`), shown as given, with a note."""
    unknown = unknown_id(session, name)
    if unknown is None:
        k = int(np.argmax(far))
        raise got.error(k, name, f"the id {values[k]} does not fit the model's int64 input",
                        code=codes.BAD_NUMBER)
    out[far] = unknown
    got.shown[name] = np.asarray([whole(v) for v in values], dtype=object)
    count = int(far.sum())
    got.notes.append(f"column '{name}': {count} id{'s' if count > 1 else ''} past the int64 range "
                     f"(the first: {got.shown[name][int(np.argmax(far))]}) never seen in training; the model "
                     f"reads {'them' if count > 1 else 'it'} as an unknown id")


def whole(value) -> int | None:
    """A value as a whole number, the model's ids being integers: an integer, a float without a
    fraction, or the text of a whole number; None for anything else (a fraction, true, null)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    if not isinstance(value, (str, bytes)):
        return None
    try:
        return int(value.decode("utf-8") if isinstance(value, bytes) else value)
    except (ValueError, UnicodeDecodeError):
        return None


def unknown_id(session, name: str) -> int | None:
    """An int64 id the model never saw: one below its smallest id (or above its largest), the ids
    the export's parity check proves map to the unknown row."""
    vocab = json.loads(session.metadata.get("specc.vocabs", "{}")).get(name)
    if not vocab or not vocab.get("values"):
        return None
    ids_ = sorted(int(v) for v in vocab["values"])
    if ids_[0] > INT64_MIN:
        return ids_[0] - 1
    return ids_[-1] + 1 if ids_[-1] < INT64_MAX else None


def texts(name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """Category values as strings: text as it is, whole numbers written out (an object array may
    hold numbers, as JSON gives them; anything else in it is no category)."""
    kind = values.dtype.kind
    if kind == "O" and not set(map(type, values)) <= {str}:
        values = _category_cells(name, values, got)
    if kind in "OU":
        if (k := first_not_text(values)) is not None:  # onnxruntime takes UTF-8 strings only
            raise got.error(k, name, f"holds a string that is not UTF-8 text ('{printable(str(values[k]))}')",
                            code=codes.NOT_UTF8)
        return np.asarray([str(v) for v in values], dtype=object)
    if kind == "S":
        out = np.empty(len(values), dtype=object)
        for k, raw in enumerate(values):
            try:
                out[k] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise got.error(k, name, "holds bytes that are not UTF-8 text", code=codes.NOT_UTF8) from None
        return out
    if kind in "iu":
        return np.asarray([str(int(v)) for v in values], dtype=object)
    raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes categories "
                    "(text or whole numbers)", code=codes.WRONG_TYPE, whole=True)


def _category_cells(name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """An object array's values as a category's text: text as it is, a number written out."""
    out = np.empty(len(values), dtype=object)
    for k, value in enumerate(values):
        if isinstance(value, str):
            out[k] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[k] = str(value)
        else:
            raise got.error(k, name, f"expected a category (text or a whole number), found {shown_value(value)}",
                            code=codes.WRONG_TYPE)
    return out


def shown_value(value) -> str:
    """A value in a message: text quoted as a cell is ('abc'), anything else (a JSON number, true,
    null, an array) as JSON, cut short."""
    if isinstance(value, (str, bytes)):
        return f"'{value.decode('utf-8', 'replace') if isinstance(value, bytes) else value}'"
    try:
        text = json.dumps(value)
    except (RecursionError, TypeError, ValueError):  # nested about as deep as json.loads allows; not JSON
        return {dict: "an object", list: "an array"}.get(type(value), str(value))
    return text if len(text) <= 60 else text[:57] + "..."


def missing_text(absent: list[str], what: str = "input") -> str:
    """`missing input column 'item'`: the words for columns the model needs and was not given."""
    return f"missing {what} column{'s' if len(absent) > 1 else ''} {', '.join(repr(m) for m in absent)}"


def class_key(value, integer: bool):
    """A label as the model's vocabulary holds it: a whole number for integer classes, else text.
    A label that cannot be one stays text, so that it is reported as a class never seen."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not integer:
        return str(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and value == int(value) else str(value)
    try:
        number = int(value)
    except ValueError:
        return str(value)
    return number if INT64_MIN <= number <= INT64_MAX else str(value)


def padded_sets(sets: np.ndarray, integer: bool, error: At) -> np.ndarray:
    """Sets as the exported model's input takes them: (N, L) int64 ids padded with SET_PAD_ID, or text padded
    with SET_PAD_TEXT, L the longest set (at least 1); each row's ids once. `error(row, message)` for an id
    that is no whole number where the model's ids are."""
    if isinstance(sets, np.ndarray) and sets.ndim == 2:  # already padded, as an .npz holds sets
        from specc.data.sets import from_padded

        sets = from_padded(sets)
    width = max([1] + [len(set(items)) for items in sets])
    out = np.full((len(sets), width), SET_PAD_ID if integer else SET_PAD_TEXT, dtype=np.int64 if integer else object)
    for k, items in enumerate(sets):
        distinct = list(dict.fromkeys(items))
        if integer:
            numbers = [whole(i) for i in distinct]
            if None in numbers:
                bad = distinct[numbers.index(None)]
                raise error(k, f"expected whole-number ids (the model's are integers), found '{bad}'",
                            codes.WRONG_TYPE)
            # an id past int64 was never seen in training: dropped, as an unknown id is
            distinct = [n for n in numbers if -(1 << 63) <= n < (1 << 63) and n != SET_PAD_ID]
        else:
            distinct = [str(i) for i in distinct]
        out[k, :len(distinct)] = distinct
    return out
