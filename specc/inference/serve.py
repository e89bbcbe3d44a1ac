"""Serve: an exported model.onnx -> an HTTP endpoint (a WSGI app on waitress) that answers JSON rows
with the predictions `specc predict` gives, concurrent requests batched into one onnxruntime run."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import numpy as np

from specc.data.files import describe_array
from specc.data.table import shown_names
from specc.inference.columns import Inputs, column_kind, missing_text, row_shape, shown_value, typed
from specc.inference.infer import cell_texts, output_columns
from specc.inference.read_text import text_options
from specc.inference.recommend import ITEMS, SCORES, recommend, recommender
from specc.inference.session import Session, load_session
from specc.language import codes
from specc.language.diagnostics import UsageError
from specc.language.spec import CATEGORIES, FLOAT

ROUTES = {"/predict": ("POST",), "/recommend": ("POST",), "/health": ("GET", "HEAD"), "/schema": ("GET", "HEAD")}
JSON_TYPES = ("application/json",)


@dataclass(frozen=True, slots=True)
class HttpCode:
    """A code of the server's own errors (a data error carries predict's D-code instead), its HTTP
    status and what it means; README's table of them is tested against HTTP_CODES."""

    code: str
    status: int
    meaning: str

    def __str__(self) -> str:
        return self.code


NOT_JSON = HttpCode("H101", 400, "the body is not JSON: malformed, not UTF-8/16/32 text, a number of more than 4,300 "
                                 "digits, or nested 1,000 levels deep")
EMPTY_BODY = HttpCode("H102", 400, "the body is empty (`Content-Length: 0`)")
NOT_INPUTS = HttpCode("H103", 400, "JSON that is not inputs as columns or rows: a number or text, a row that is not "
                                   "an object, a column that is not an array")
TOO_MANY_ROWS = HttpCode("H104", 413, "more rows than `--max-rows`")
TOO_LARGE = HttpCode("H105", 413, "a body larger than `--max-body-mb`: refused by its `Content-Length` before it is "
                                  "read (a chunked body once it passes the cap)")
NO_LENGTH = HttpCode("H106", 411, "a POST with neither a `Content-Length` nor a chunked body")
NOT_SENT_AS_JSON = HttpCode("H107", 415, "a `Content-Type` other than `application/json` (or `*/*+json`)")
NO_SUCH_PATH = HttpCode("H201", 404, "a path other than `/predict`, `/recommend`, `/health` and `/schema`")
WRONG_METHOD = HttpCode("H202", 405, "a method the path does not take (the `Allow` header says which it does)")
OTHER_KIND = HttpCode("H203", 404, "`/recommend` of a model that predicts, or `/predict` of a recommender (a spec of "
                      "implicit feedback), which answers `/recommend`")
MALFORMED_HTTP = HttpCode("H301", 400, "a request that is not well-formed HTTP/1.x (waitress's parser: a bad request "
                                       "line, header, `Content-Length` or chunk)")
TIMED_OUT = HttpCode("H302", 408, "the request did not arrive whole within `--request-timeout` of its first byte "
                                  "(headers or body trickled, or a `Content-Length` larger than what was sent)")
HEADERS_TOO_LARGE = HttpCode("H303", 431, "a request line and headers of more than 64 KiB")
NOT_IMPLEMENTED = HttpCode("H304", 501, "a `Transfer-Encoding` other than `chunked`")
BUG = HttpCode("H401", 500, "a bug in specc: the traceback is in the server's log, never in the answer")
STOPPING = HttpCode("H402", 503, "the server is stopping")
HTTP_CODES = (NOT_JSON, EMPTY_BODY, NOT_INPUTS, TOO_MANY_ROWS, TOO_LARGE, NO_LENGTH, NOT_SENT_AS_JSON, NO_SUCH_PATH,
              WRONG_METHOD, OTHER_KIND, MALFORMED_HTTP, TIMED_OUT, HEADERS_TOO_LARGE, NOT_IMPLEMENTED, BUG, STOPPING)


class Rejected(Exception):
    """A request the server answers with an error: the message, and its code (an HttpCode, with
    its status, or predict's D-code for a value the model cannot take: a 400)."""

    def __init__(self, message: str, code: HttpCode | codes.Code, allow: tuple[str, ...] = ()):
        super().__init__(message)
        self.message, self.code, self.allow = message, code, allow
        self.status = code.status if isinstance(code, HttpCode) else 400

    def body(self) -> dict:
        """The answer's JSON: `{"error": ..., "code": ...}`."""
        return {"error": self.message, "code": str(self.code)}


# ---------------------------------------------------------------- reading a request


class _Request(Inputs):
    """A request's inputs; a value the model cannot take is reported at its row (counted from 0, as
    JSON arrays are) and column, in predict's words."""

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> Rejected:
        where = f"column '{column}'"
        if isinstance(index, tuple) and len(index) > 1:
            where += f", element {list(index[1:])}"
        if not whole:
            where = f"row {index[0] if isinstance(index, tuple) else index}: {where}"
        return Rejected(f"{where}: {message}", code)


def _shown(value) -> str:
    """A JSON value in a message: text quoted as predict quotes a cell, anything else as JSON, cut short."""
    text = shown_value(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_request(session: Session, body: bytes, max_rows: int) -> tuple[_Request, bool]:
    """The model's inputs from a JSON body, typed as predict types a CSV's: columns
    (`{"user": [1, 2], "item": [3, 4]}`) or rows (`[{"user": 1, "item": 3}, ...]`); and whether
    they came as rows (the answer takes the same form). Columns the model does not read are ignored."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON, or bytes that are no UTF-8/16/32 text
        raise Rejected(f"the request body is not valid JSON: {err}", NOT_JSON) from None
    wanted = list(session.inputs)
    if isinstance(data, list):
        if len(data) > max_rows:
            raise _too_many(len(data), max_rows)
        columns = _from_rows(data, wanted)
    elif isinstance(data, dict):
        columns = _from_columns(data, wanted, max_rows)
    else:
        raise Rejected('expected the inputs as columns ({"name": [value, ...], ...}) or as rows '
                       f'([{{"name": value, ...}}, ...]), found {_kind(data)}', NOT_INPUTS)
    rows = len(columns[wanted[0]])
    if rows == 0:
        raise Rejected("the request has no rows", codes.NO_ROWS)
    got = _Request({}, rows, path="request")
    reading = text_options(session, Path("request"))
    for name in wanted:
        got.feed[name] = typed(session, name, _values(session, name, columns[name], reading), got)
    return got, isinstance(data, list)


def _too_many(rows: int, max_rows: int) -> Rejected:
    return Rejected(f"the request has {rows} rows; this server takes at most {max_rows} a request (--max-rows)",
                    TOO_MANY_ROWS)


def _from_rows(data: list, wanted: list[str]) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in wanted}
    for k, row in enumerate(data):
        if not isinstance(row, dict):
            raise Rejected(f"row {k}: expected an object of column values, found {_shown(row)}", NOT_INPUTS)
        try:
            for name in wanted:
                columns[name].append(row[name])
        except KeyError:
            absent = [name for name in wanted if name not in row]
            has = f"the row has: {shown_names(list(row))}" if row else "the row is empty"
            raise Rejected(f"row {k}: {missing_text(absent)} ({has})", codes.MISSING_INPUT) from None
    return columns


def _from_columns(data: dict, wanted: list[str], max_rows: int) -> dict[str, list]:
    absent = [name for name in wanted if name not in data]
    if absent:
        has = f"the request has: {shown_names(list(data))}" if data else "the request has no columns"
        raise Rejected(f"{missing_text(absent)} ({has})", codes.MISSING_INPUT)
    for name in wanted:
        if not isinstance(data[name], list):
            raise Rejected(f"column '{name}': expected an array of values, one a row, found {_shown(data[name])}",
                           NOT_INPUTS)
    counts = {name: len(data[name]) for name in wanted}
    if len(set(counts.values())) > 1:
        raise Rejected("the columns have different numbers of rows ("
                       + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")", codes.DATA_SHAPE)
    if counts[wanted[0]] > max_rows:
        raise _too_many(counts[wanted[0]], max_rows)
    return {name: data[name] for name in wanted}


def _values(session: Session, name: str, values: list, reading) -> np.ndarray:
    """One input's JSON values as the raw array a CSV's column would have given predict, for
    predict's own typing (specc.inference.columns) to take or refuse: ids and categories as the
    values they are (text stripped where the training data's was), numbers as float64 with NaN for
    null and for the training data's missing-value markers, rows of arrays as one array."""
    if column_kind(session, name) == CATEGORIES:  # a set a row: a JSON array of ids, or text split at the sep
        return _json_sets(session, name, values, reading)
    shape = row_shape(session, name)
    if shape != ():
        return _nested(name, values, shape)
    if column_kind(session, name) == FLOAT:
        return _json_numbers(name, values, reading)
    return _json_cells(values, reading.strip)


def _json_sets(session: Session, name: str, values: list, reading) -> np.ndarray:
    """A set column's JSON values as predict's reader of text gives them: one tuple of ids a row, from an array
    (null: the empty set) or a string split at the column's sep; anything else is kept whole, for predict's
    typing to refuse."""
    from specc.data.sets import sets_array, split_texts
    from specc.inference.columns import declared_inputs

    sep = declared_inputs(session)[name]["sep"]
    rows = []
    for v in values:
        if isinstance(v, str):
            rows.append(split_texts([v], sep, reading.strip)[0])
        elif v is None:
            rows.append(())
        else:
            rows.append(tuple(v) if isinstance(v, list) else (v,))
    return sets_array(rows)


def _json_cells(values: list, strip: bool) -> np.ndarray:
    """Ids or categories: int64 when every value is a JSON integer of int64's range, else the values
    as they are, in an object array."""
    if all(type(v) is int for v in values):
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:  # an id past int64: predict's typing reads it as an unknown id
            pass
    out = np.empty(len(values), dtype=object)
    for k, v in enumerate(values):
        out[k] = v.strip() if strip and type(v) is str else v
    return out


def _json_numbers(name: str, values: list, reading) -> np.ndarray:
    if all(type(v) is float or type(v) is int for v in values):
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:  # an int past float64: inf, which predict's check reports
            pass
    out = np.empty(len(values), dtype=np.float64)
    for k, v in enumerate(values):
        if type(v) in (int, float):
            out[k] = v if type(v) is float or abs(v) < 2 ** 1023 else math.copysign(math.inf, v)
        elif v is None:
            out[k] = np.nan  # a missing value: the model fills it where it was trained to (fill_missing)
        elif type(v) is str and (v.strip() if reading.strip else v) in reading.missing:
            out[k] = np.nan  # one of the training data's missing-value markers, as in a CSV
        else:
            try:
                if type(v) is not str:
                    raise ValueError
                out[k] = float(v)
            except ValueError:
                raise Rejected(f"row {k}: column '{name}': expected a number, found {_shown(v)}",
                               codes.WRONG_TYPE) from None
    return out


def _nested(name: str, values: list, shape: tuple | None) -> np.ndarray:
    """Rows that are arrays themselves (a float(784) input, an image's pixels)."""
    def rows_of(s):
        return "one value per row" if s == () else f"rows of shape {s}"

    if (depth := _depth(values) - 1) > MAX_DIMENSIONS:  # numpy would refuse it, in words about shapes
        raise Rejected(f"column '{name}': its rows are arrays nested {depth} levels deep; the model takes "
                       f"{rows_of(shape) if shape is not None else 'rows of one shape'}", codes.DATA_SHAPE)
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged
        raise Rejected(f"column '{name}': its rows are arrays of different shapes; the model takes "
                       f"{rows_of(shape) if shape is not None else 'rows of one shape'}", codes.DATA_SHAPE) from None
    if arr.dtype.kind not in "iuf":
        raise Rejected(f"column '{name}': expected numbers, found {describe_array(arr)}", codes.WRONG_TYPE)
    if shape is not None and tuple(arr.shape[1:]) != shape:
        raise Rejected(f"column '{name}': {rows_of(tuple(arr.shape[1:]))}, but the model's column '{name}' "
                       f"takes {rows_of(shape)}", codes.DATA_SHAPE)
    return arr


MAX_DIMENSIONS = 32  # numpy takes up to 64; no model's row has half as many


def _depth(value) -> int:
    """How deep the first element of a nested JSON array lies (1 for a flat array)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


# ---------------------------------------------------------------- batching


@dataclass(eq=False)
class _Job:
    feed: dict[str, np.ndarray]
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class Batcher:
    """One worker thread that runs the session for every request: the requests waiting in its queue
    are concatenated into one run of up to `max_batch` rows (a larger request runs alone), and the
    outputs split back. A batch waits up to `max_wait` seconds for more only while requests are
    being read (announced with `expect`): with none on the way it runs at once, so a lone client
    pays no wait."""

    def __init__(self, session: Session, max_batch: int, max_wait: float, run=None):
        self.session, self.max_batch, self.max_wait = session, max_batch, max_wait
        # IO binding on the GPU; a recommender's users ranked a few at a time (specc.inference.recommend)
        self.run = run or (session.run_bound if session.device == "cuda" else session.run)
        self.cond = threading.Condition()
        self.jobs: deque[_Job] = deque()
        self.arriving = 0
        self.closed = False
        self.runs = self.requests = self.largest = 0  # session runs, requests answered, most requests in a run
        self.worker = threading.Thread(target=self._loop, name="specc-batcher", daemon=True)
        self.worker.start()

    def expect(self) -> None:
        """A request is being read: a batch may wait (up to max_wait) for it."""
        with self.cond:
            self.arriving += 1

    def unexpect(self) -> None:
        """A request announced by `expect` will not come (it was rejected)."""
        with self.cond:
            self.arriving -= 1
            self.cond.notify_all()

    def predict(self, feed: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """The model's outputs for one request's feed (announced by `expect`), run with others'."""
        job = _Job(feed, rows)
        with self.cond:
            self.arriving -= 1
            if self.closed:
                raise Rejected("the server is stopping", STOPPING)
            self.jobs.append(job)
            self.cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self, timeout: float = 10.0) -> None:
        """Answer the requests queued, then stop the worker."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.worker.join(timeout)

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            try:
                self._run(batch)
            except BaseException as err:  # a bug here must still answer every request (each logs it)
                for job in batch:
                    if not job.done.is_set():
                        job.error = err
                        job.done.set()

    def _next(self) -> list[_Job] | None:
        with self.cond:
            while not self.jobs:
                if self.closed:
                    return None
                self.cond.wait()
            batch = [self.jobs.popleft()]
            rows = batch[0].rows
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_batch:
                if self.jobs:
                    if rows + self.jobs[0].rows > self.max_batch:
                        break  # it starts the next batch
                    batch.append(self.jobs.popleft())
                    rows += batch[-1].rows
                elif self.arriving > 0 and not self.closed and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)
                else:
                    break
            return batch

    def _run(self, batch: list[_Job]) -> None:
        if len(batch) == 1:
            feed = batch[0].feed
        else:
            feed = {name: np.concatenate([job.feed[name] for job in batch]) for name in batch[0].feed}
        try:
            results = self.run(feed)
        except Exception as err:
            if len(batch) > 1:  # perhaps one request's rows: run each alone, so that only its own fails
                for job in batch:
                    self._run([job])
                return
            batch[0].error = err
            batch[0].done.set()
            return
        self.runs += 1
        self.requests += len(batch)
        self.largest = max(self.largest, len(batch))
        start = 0
        for job in batch:
            job.result = {name: values[start:start + job.rows] for name, values in results.items()}
            start += job.rows
            job.done.set()


# ---------------------------------------------------------------- the WSGI app


def _json_values(values: np.ndarray) -> list[str]:
    """An output column as JSON texts: a number as predict's CSV writes it (cell_texts: a float32 as
    the shortest decimal that reads back as the same float32, not as a float64's 17 digits); NaN and
    inf as null (JSON has neither); a label as a JSON string."""
    if values.dtype.kind in "iuf":
        texts = cell_texts(values)
        if values.dtype.kind == "f" and not (finite := np.isfinite(values)).all():
            return [text if ok else "null" for text, ok in zip(texts, finite)]
        return texts
    return [json.dumps(str(v)) for v in values]


def answer(names: list[str], columns: list[np.ndarray], rows_form: bool) -> bytes:
    """The predictions as JSON, in the form the request came in: an object of output columns, or
    an array of one object a row; the names are predict's CSV columns (`rating`, or `label` and
    `probability_<class>` apiece)."""
    keys = [json.dumps(name) for name in names]
    texts = [_json_values(np.asarray(c)) for c in columns]
    if not rows_form:
        return ("{" + ", ".join(f"{k}: [{', '.join(t)}]" for k, t in zip(keys, texts)) + "}").encode()
    return ("[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, row)) + "}"
                            for row in zip(*texts)) + "]").encode()


def recommendations(session: Session, feed: dict, results: dict, rows_form: bool) -> bytes:
    """POST /recommend's answer: each user, its items best first and their scores (a rank left empty,
    at -inf, left out), as columns (`{"user": [...], "items": [[...]], "scores": [[...]]}`) or as rows
    (`[{"user": ..., "items": [...], "scores": [...]}, ...]`), the form the request came in."""
    column = recommender(session)["user"]
    users, key = _json_values(feed[column]), json.dumps(column)
    items, scores = [], []
    for row_items, row_scores in zip(results[ITEMS], results[SCORES]):
        kept = np.isfinite(row_scores)
        items.append("[" + ", ".join(_json_values(row_items[kept])) + "]")
        scores.append("[" + ", ".join(_json_values(row_scores[kept])) + "]")
    if rows_form:
        rows = [f'{{{key}: {u}, "items": {i}, "scores": {s}}}' for u, i, s in zip(users, items, scores)]
        return ("[" + ", ".join(rows) + "]").encode()
    return (f'{{{key}: [{", ".join(users)}], "items": [{", ".join(items)}], '
            f'"scores": [{", ".join(scores)}]}}').encode()


def schema(session: Session, model: str) -> dict:
    """The model's inputs (name, kind, type, shape of a row), target, classes and output columns,
    from its metadata, as predict reads them."""
    meta = session.metadata
    declared = {c["name"]: c for c in json.loads(meta.get("specc.inputs", "[]"))}
    inputs = []
    for name, kind in session.inputs.items():
        dtype = kind.removeprefix("tensor(").removesuffix(")")
        given = declared.get(name, {})
        inputs.append({"name": name, "kind": given.get("kind", "float" if dtype.startswith("float") else "category"),
                       "type": dtype, "shape": given.get("shape", row_shape(session, name))})
    target, kind = meta.get("specc.target"), meta.get("specc.target_kind")
    classes = json.loads(meta.get("specc.vocabs", "{}")).get(target, {}).get("values") if kind == "category" else None
    shapes = {o.name: o.shape for o in session.session.get_outputs()}
    dummy = {name: np.zeros((0, *[d if isinstance(d, int) else len(classes or [0]) for d in shapes[name][1:]]))
             for name in session.outputs}
    return {"model": model, "inputs": inputs, "target": {"name": target, "kind": kind}, "classes": classes,
            "outputs": output_columns(session, dummy)[0]}


BYTES_A_ROW, BYTES_A_VALUE = 256, 32  # what a row may take in JSON: its braces, names and columns the model
# does not read, and each value (a float's 24 characters, a category's text, spaces): several times what
# compact JSON takes (about 12 bytes a value as columns, 15 as rows)
MAX_BODY = 1000 * 10 ** 6  # the most --max-body-mb allows: parsing a body takes several times its size
UNKNOWN_ROW_VALUES = 4096  # the values counted for a row whose shape the model does not fix


def body_limit(session: Session, max_rows: int) -> int:
    """The bytes a request's body may take by default: what `max_rows` rows of the model's inputs
    take in JSON, with room to spare (BYTES_A_ROW, BYTES_A_VALUE), up to MAX_BODY."""
    values = 0
    for name in session.inputs:
        shape = row_shape(session, name)
        values += UNKNOWN_ROW_VALUES if shape is None else math.prod(shape)
    return min(MAX_BODY, max_rows * (BYTES_A_ROW + BYTES_A_VALUE * values))


class App:
    """The WSGI application: POST /predict, GET /health, GET /schema; every answer JSON, every
    mistake a 4xx `{"error": ..., "code": ...}` in predict's words, a bug a 500 whose traceback goes
    to stderr."""

    def __init__(self, session: Session, model: str, max_batch: int = 4096, max_wait_ms: float = 2.0,
                 max_rows: int = 65536, max_body: int | None = None):
        self.session, self.model, self.max_rows = session, model, max_rows
        self.max_body = body_limit(session, max_rows) if max_body is None else max_body
        self.schema = {**schema(session, model),
                       "limits": {"max_rows": max_rows, "max_body_bytes": self.max_body, "max_batch": max_batch,
                                  "max_wait_ms": max_wait_ms}}
        self.recommends = "specc.recommend" in session.metadata
        run = None
        if self.recommends:  # each user's top k: as many users a run as fit the cache, however many are batched
            user = recommender(session)["user"]
            run = lambda feed: dict(zip((ITEMS, SCORES), recommend(session, feed[user])))  # noqa: E731
        self.batcher = Batcher(session, max_batch, max_wait_ms / 1000, run)

    def close(self) -> None:
        self.batcher.close()

    def __call__(self, environ, start_response):
        headers = []
        try:
            status, body = self._route(environ)
        except Rejected as err:
            status, body = err.status, err.body()
            if err.allow:
                headers.append(("Allow", ", ".join(err.allow)))
        except Exception:
            traceback.print_exc(file=sys.stderr)  # the server's log
            status, body = BUG.status, Rejected("internal error in specc serve (a bug: its traceback is in the "
                                                "server's log)", BUG).body()
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *headers])
        return [payload]

    def _route(self, environ) -> tuple[int, dict | bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path not in ROUTES:
            shown = path if len(path) <= 80 else path[:77] + "..."
            answered = "/recommend" if self.recommends else "/predict"  # the other one is H203's
            raise Rejected(f"no such path '{shown}'; the paths are POST {answered}, GET /health and GET /schema",
                           NO_SUCH_PATH)
        if method not in ROUTES[path]:
            raise Rejected(f"{path} takes {' or '.join(ROUTES[path])}, not {method}", WRONG_METHOD, ROUTES[path])
        if path == "/health":
            if not self.batcher.worker.is_alive():
                raise Rejected("the server is stopping", STOPPING)
            b = self.batcher  # how well requests batch: requests answered, session runs, most in one run
            return 200, {"status": "ok", "model": self.model, "provider": self.session.provider,
                         "requests": b.requests, "runs": b.runs, "largest_batch": b.largest}
        if path == "/schema":
            return 200, self.schema
        if (path == "/recommend") != self.recommends:
            raise Rejected("this model recommends (its spec's target is implicit feedback): POST /recommend" if
                           self.recommends else "this model predicts; POST /recommend is a recommender's (a spec whose "
                           "target is implicit(...)): POST /predict", OTHER_KIND)
        return 200, self.predict(environ)

    def predict(self, environ) -> bytes:
        """POST /predict: a JSON body of columns or rows -> the predictions in the same form."""
        media = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if media not in JSON_TYPES and not media.endswith("+json"):
            raise Rejected("expected a JSON body (Content-Type: application/json), found "
                           + (f"'{media}'" if media else "no Content-Type"), NOT_SENT_AS_JSON)
        length = self.body_length(environ)
        self.batcher.expect()
        try:
            got, rows_form = read_request(self.session, environ["wsgi.input"].read(length), self.max_rows)
        except BaseException:
            self.batcher.unexpect()
            raise
        results = self.batcher.predict(got.feed, got.rows)
        if self.recommends:
            return recommendations(self.session, got.feed, results, rows_form)
        names, columns = output_columns(self.session, results)
        return answer(names, columns, rows_form)

    def body_length(self, environ) -> int:
        """The body's length from its Content-Length, refused before a byte of it is read where it
        is none, zero or past the cap (waitress refuses a larger one before the app is called: this
        holds under another WSGI server)."""
        text = environ.get("CONTENT_LENGTH", "").strip()
        if not text:
            raise Rejected("the request has no body: send the inputs as JSON with a Content-Length (or chunked)",
                           NO_LENGTH)
        if not (text.isascii() and text.isdigit()):
            raise Rejected(f"a malformed HTTP request: Content-Length '{text[:40]}' is not a number of bytes",
                           MALFORMED_HTTP)
        if int(text) == 0:
            raise Rejected("the request body is empty; expected the inputs as JSON", EMPTY_BODY)
        if int(text) > self.max_body:
            raise too_large(int(text), self.max_body)
        return int(text)


def too_large(length: int | None, max_body: int) -> Rejected:
    """A body past the cap (its length, where it is known)."""
    size = f"of {length:,} bytes " if length is not None else ""
    return Rejected(f"the request body {size}is larger than this server takes: at most {max_body:,} bytes "
                    "(--max-body-mb)", TOO_LARGE)


# ---------------------------------------------------------------- the server

DEFAULT_CONNECTIONS = 1000  # open connections, slow ones included, before new ones wait in the backlog
MAX_HEADER = 64 * 1024  # a request line and headers (waitress's default: 256 KiB)
BODY_BUFFER = 64 * 1024  # a body being received past this waits in a temporary file, not in memory
FILES_A_CONNECTION = 3  # its socket, a body past BODY_BUFFER, an answer past waitress's 1 MiB out-buffer
SPARE_FILES = 64  # the model, the listening sockets, onnxruntime's and Python's own
STOP_TIMEOUT = 120.0  # seconds the threads have to finish the requests they are answering, once stopped


def connection_limit(connections: int | None, threads: int) -> int:
    """`connections` (None: DEFAULT_CONNECTIONS, or as many as fit), checked against this process's
    limit on open files, which is raised up to its hard limit if need be: past it, waitress's
    accept() would fail in a loop."""
    wanted = connections or DEFAULT_CONNECTIONS
    have = _open_file_limit(FILES_A_CONNECTION * wanted + threads + SPARE_FILES)
    fits = (have - threads - SPARE_FILES) // FILES_A_CONNECTION
    if wanted <= fits:
        return wanted
    if connections is None and fits >= 1:
        return fits
    raise UsageError(f"--connection-limit {wanted}: a connection may hold {FILES_A_CONNECTION} open files and this "
                     f"process may open {have} (ulimit -n), room for {max(fits, 0)} connections beside {threads} "
                     "threads; lower --connection-limit or raise ulimit -n")


def _open_file_limit(needed: int) -> int:
    """This process's limit on open files, first raised towards `needed` (up to the hard limit)."""
    try:
        import resource
    except ImportError:  # Windows: sockets are no files there
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OverflowError, OSError):  # past the kernel's nr_open, or macOS's OPEN_MAX
        return soft
    return target


def _waitress_error(request, max_body: int) -> Rejected:
    """An error waitress found before the app was called (its parser's, or a time-out), in specc's
    words and codes."""
    error = request.error
    said = str(error.body)
    if error.code == 413:
        return too_large(request.content_length or None, max_body)  # chunked: no length was given
    if error.code == 431:
        return Rejected(f"the request line and headers are larger than this server takes: at most {MAX_HEADER:,} "
                        "bytes", HEADERS_TOO_LARGE)
    if error.code == 408:
        return Rejected(said, TIMED_OUT)
    if error.code == 501:
        return Rejected("a Transfer-Encoding this server does not take: send the body as it is, or chunked",
                        NOT_IMPLEMENTED)
    if error.code == 400:
        return Rejected(f"a malformed HTTP request (waitress's parser: {said.rstrip('.')})", MALFORMED_HTTP)
    return Rejected("internal error in specc serve (a bug: its traceback is in the server's log)", BUG)


@functools.cache
def _parser_and_error_task():
    """waitress's request parser, with the ValueErrors it lets out (and closes the connection on,
    without an answer) made a 400; its task for an error, answering in JSON as the app does. Made
    on first use, waitress being an extra."""
    from waitress.parser import HTTPRequestParser, ParsingError
    from waitress.task import ErrorTask

    class Parser(HTTPRequestParser):
        def parse_header(self, header_plus):
            try:
                super().parse_header(header_plus)
            except ValueError as err:  # a Content-Length past int()'s 4,300 digits, an IPv6 host unclosed
                if len(self.headers.get("CONTENT_LENGTH", "")) > sys.get_int_max_str_digits():
                    raise ParsingError("Content-Length is invalid (too many digits)") from None
                raise ParsingError(f"invalid request line or header ({err})") from None

    class JsonErrorTask(ErrorTask):
        def execute(self):
            rejected = _waitress_error(self.request, self.channel.max_body)
            body = json.dumps(rejected.body()).encode()
            self.status = f"{rejected.status} {HTTPStatus(rejected.status).phrase}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    return Parser, JsonErrorTask


@functools.cache
def _channel_class():
    """waitress's channel (one a connection), made to answer its own errors as the app does and to
    give a request `request_timeout` seconds from its first byte to arrive whole, trickled or not:
    waitress's channel_timeout counts only silence."""
    from waitress.channel import HTTPChannel
    from waitress.utilities import Error

    class RequestTimeout(Error):
        code, reason = 408, "Request Timeout"

    class Channel(HTTPChannel):
        parser_class, error_task_class = _parser_and_error_task()

        def __init__(self, server, sock, addr, adj, map=None, *, max_body: int, request_timeout: float):
            self.max_body, self.request_timeout, self.began = max_body, request_timeout, time.monotonic()
            super().__init__(server, sock, addr, adj, map)

        def received(self, data):
            before = self.request
            try:
                return super().received(data)
            finally:
                if self.request is not None and self.request is not before:
                    self.began = time.monotonic()  # a new request's first bytes: its clock starts

        def readable(self):  # asked of every connection on each turn of the loop, at least once a second
            if self.request is not None and not (self.will_close or self.close_when_flushed):
                if self.requests:  # an earlier request is being answered: this one is not being read yet
                    self.began = time.monotonic()
                elif time.monotonic() - self.began > self.request_timeout:
                    self.time_out()
            return super().readable()

        def time_out(self):
            """Answer the request being received with a 408 (then close), as waitress answers its own errors."""
            with self.requests_lock:
                request, self.request = self.request, None
                if not request.headers_finished:
                    request.parse_header(b"GET / HTTP/1.0\r\n")  # a request line to answer, as waitress's 431 does
                request.error = RequestTimeout(f"the request did not arrive whole within {self.request_timeout:g} "
                                               "s of its first byte (--request-timeout)")
                request.completed = True
                self.requests.append(request)
            self.server.add_task(self)

    return Channel


class Server:
    """waitress serving an App on `host`:`port` (0: a free port): `run()` on this thread until
    Ctrl-C (the command), or `start()` and `stop()` on a thread of its own (tests, benchmarks).
    Hostile clients meet limits: `connections` open at once (slow ones included), `channel_timeout`
    seconds of silence, `request_timeout` seconds for a request to arrive whole, the app's body cap
    (refused by Content-Length before the body is read), MAX_HEADER bytes of headers."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 8000, threads: int = 16,
                 connections: int | None = None, channel_timeout: int = 30, request_timeout: float = 60.0):
        from waitress.server import BaseWSGIServer, create_server

        self.app = app
        self.connections = connection_limit(connections, threads)
        self.server = create_server(
            app, host=host, port=port, threads=threads, ident="specc",
            asyncore_use_poll=True,  # poll(): no select() limit of 1,024 sockets
            connection_limit=self.connections, channel_timeout=channel_timeout,
            cleanup_interval=1,  # silent connections looked for every second (waitress: every 30)
            max_request_header_size=MAX_HEADER,
            max_request_body_size=app.max_body + 1,  # waitress refuses a body of this size or more
            inbuf_overflow=BODY_BUFFER,
            log_socket_errors=False)  # a client that resets its connection: no news, and no traceback in the log
        channel = functools.partial(_channel_class(), max_body=app.max_body, request_timeout=request_timeout)
        for dispatcher in list(self._map().values()):
            if isinstance(dispatcher, BaseWSGIServer):  # a listening socket (several with --host localhost)
                dispatcher.channel_class = channel
        self.thread: threading.Thread | None = None

    @property
    def urls(self) -> list[str]:
        """Where it listens, its port resolved (`--port 0`)."""
        listening = getattr(self.server, "effective_listen", None) or \
            [(self.server.effective_host, self.server.effective_port)]
        return [f"http://{f'[{h}]' if ':' in h else h}:{p}" for h, p in listening]

    @property
    def url(self) -> str:
        return self.urls[0]

    def run(self) -> None:
        """Serve until Ctrl-C, then stop as `stop` does."""
        from waitress import wasyncore

        try:
            wasyncore.loop(timeout=1.0, map=self._map(), use_poll=True)
        except KeyboardInterrupt:  # (waitress's own run() gives the threads a fixed 5 s, then warns)
            pass
        finally:
            self._close()

    def start(self) -> Server:
        """Serve on a thread of its own, until `stop`."""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="specc-serve", daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        from waitress import wasyncore

        sockets = self._map()
        while sockets and not self.stopping.is_set():  # waitress's loop, a poll at a time, to stop between
            wasyncore.loop(timeout=0.05, map=sockets, use_poll=True, count=1)

    def stop(self) -> None:
        """Stop a server `start` started: its loop ended, its sockets closed, its threads joined."""
        self.stopping.set()
        self.thread.join(STOP_TIMEOUT)
        self._close()

    def _close(self) -> None:
        """Close every connection, then wait for the threads to finish the requests they are answering
        (a condition, bounded by STOP_TIMEOUT, not waitress's fixed 5 s), then the listening sockets and
        the trigger: a thread that finishes a request pulls the trigger to wake the loop, and one pulled
        once closed (closing a server closes it) printed waitress's traceback ("Exception when
        servicing") on a Ctrl-C under load."""
        from waitress import wasyncore

        from waitress.channel import HTTPChannel

        # the connections first; the listening sockets after the threads, as closing one closes the trigger too
        connections = {fd: obj for fd, obj in self._map().items() if isinstance(obj, HTTPChannel)}
        wasyncore.close_all(connections, ignore_all=True)
        self.server.task_dispatcher.shutdown(timeout=STOP_TIMEOUT)
        wasyncore.close_all(self._map(), ignore_all=True)

    def _map(self) -> dict:
        return getattr(self.server, "map", None) or self.server._map


OPTIONS = (  # option, attribute, least, most (None: no bound)
    ("--max-batch", "max_batch", 1, None), ("--max-rows", "max_rows", 1, None),
    ("--max-wait-ms", "max_wait_ms", 0, 60_000),  # past a minute, a batch would rather not wait
    ("--threads", "threads", 1, 1024),  # each a real thread, started at once
    ("--connection-limit", "connection_limit", 1, None),  # bounded by the open files: connection_limit()
    ("--channel-timeout", "channel_timeout", 1, 86_400), ("--request-timeout", "request_timeout", 1, 86_400),
    ("--max-body-mb", "max_body_mb", 0.001, MAX_BODY / 10 ** 6),
)


def _check_options(args) -> None:
    for option, name, least, most in OPTIONS:
        value = getattr(args, name)
        if value is None:  # the default: derived
            continue
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        if not least <= value <= (most if most is not None else value):  # NaN fails both
            bounds = f"from {least:g} to {most:,g}" if most is not None else f"of at least {least:g}"
            raise UsageError(f"{option} {shown}: expected a number {bounds}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected a port from 0 to 65535 (0: any free one)")


def serve_command(args) -> int:
    """specc serve MODEL.onnx: serve the model over HTTP until Ctrl-C (or SIGTERM)."""
    try:
        import waitress  # noqa: F401  (an extra: pip install 'specc[serve]')
    except ImportError:
        raise UsageError("specc serve needs waitress: pip install 'specc[serve]'") from None
    _check_options(args)
    connections = connection_limit(args.connection_limit, args.threads)
    if not os.path.lexists(args.model):
        raise UsageError(f"{args.model}: no such model file")
    session = load_session(args.model, device=args.device)
    max_body = None if args.max_body_mb is None else int(args.max_body_mb * 10 ** 6)
    app = App(session, args.model.name, args.max_batch, args.max_wait_ms, args.max_rows, max_body)
    try:
        server = Server(app, args.host, args.port, args.threads, connections, args.channel_timeout,
                        args.request_timeout)
    except OSError as err:  # the port taken, the host not this machine's
        app.close()
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there: "
                         f"{(err.strerror or str(err)).lower()}") from None
    print(f"specc: serving {args.model} on {', '.join(server.urls)} ({session.provider}; batches of up to "
          f"{args.max_batch} rows, {args.max_wait_ms:g} ms wait; {args.threads} threads; requests of up to "
          f"{args.max_rows} rows and {app.max_body:,} bytes; up to {connections} connections, closed after "
          f"{args.channel_timeout} s of silence, {args.request_timeout:g} s to send a request); Ctrl-C stops",
          flush=True)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # requests queue for the batcher: no news
    restore = _stop_on_sigterm()
    try:
        server.run()
    finally:
        restore()
        app.close()
    print("specc: stopped", file=sys.stderr)
    return 0


def _stop_on_sigterm():
    """SIGTERM stops the server as Ctrl-C does (its loop ends on KeyboardInterrupt); returns what
    puts the old handler back. Only the main thread can set one."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)
