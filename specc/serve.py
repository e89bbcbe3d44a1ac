"""Serve: an exported model.onnx -> an HTTP endpoint (a WSGI app on waitress) that answers JSON rows
with the predictions `specc predict` gives, concurrent requests batched into one onnxruntime run."""

from __future__ import annotations

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
from specc.diagnostics import UsageError
from specc.infer import _NUMPY, Inputs, Session, _output_columns, _row_shape, _typed, load_session, missing_text, \
    reading_options

ROUTES = {"/predict": ("POST",), "/health": ("GET", "HEAD"), "/schema": ("GET", "HEAD")}
JSON_TYPES = ("application/json",)


class Rejected(Exception):
    """A request the server answers with a 4xx (or 503): its status, the message, predict's code."""

    def __init__(self, status: int, message: str, code: str | None = None, allow: tuple[str, ...] = ()):
        super().__init__(message)
        self.status, self.message, self.code, self.allow = status, message, code, allow


# ---------------------------------------------------------------- reading a request


class _Request(Inputs):
    """A request's inputs; a value the model cannot take is reported at its row (counted from 0, as
    JSON arrays are) and column, in predict's words."""

    def error(self, index, column: str, message: str, code: str = "D104", whole: bool = False) -> Rejected:
        at = f"column '{column}'"
        if isinstance(index, tuple) and len(index) > 1:
            at += f", element {list(index[1:])}"
        if not whole:
            at = f"row {index[0] if isinstance(index, tuple) else index}: {at}"
        return Rejected(400, f"{at}: {message}", code)


def _shown(value) -> str:
    """A JSON value in a message: text quoted as predict quotes a cell, anything else as JSON, cut short."""
    text = f"'{value}'" if isinstance(value, str) else json.dumps(value)
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
        raise Rejected(400, f"the request body is not valid JSON: {err}") from None
    wanted = list(session.inputs)
    if isinstance(data, list):
        if len(data) > max_rows:
            raise _too_many(len(data), max_rows)
        columns = _from_rows(data, wanted)
    elif isinstance(data, dict):
        columns = _from_columns(data, wanted, max_rows)
    else:
        raise Rejected(400, 'expected the inputs as columns ({"name": [value, ...], ...}) or as rows '
                       f'([{{"name": value, ...}}, ...]), found {_kind(data)}')
    rows = len(columns[wanted[0]])
    if rows == 0:
        raise Rejected(400, "the request has no rows", "D102")
    got = _Request({}, rows, path="request")
    reading = reading_options(session, Path("request"))
    for name in wanted:
        got.feed[name] = _typed(session, name, _values(session, name, columns[name], reading), got)
    return got, isinstance(data, list)


def _too_many(rows: int, max_rows: int) -> Rejected:
    return Rejected(413, f"the request has {rows} rows; this server takes at most {max_rows} a request (--max-rows)")


def _from_rows(data: list, wanted: list[str]) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in wanted}
    for k, row in enumerate(data):
        if not isinstance(row, dict):
            raise Rejected(400, f"row {k}: expected an object of column values, found {_shown(row)}")
        try:
            for name in wanted:
                columns[name].append(row[name])
        except KeyError:
            absent = [name for name in wanted if name not in row]
            has = f"the row has: {shown_names(list(row))}" if row else "the row is empty"
            raise Rejected(400, f"row {k}: {missing_text(absent)} ({has})", "D107") from None
    return columns


def _from_columns(data: dict, wanted: list[str], max_rows: int) -> dict[str, list]:
    absent = [name for name in wanted if name not in data]
    if absent:
        has = f"the request has: {shown_names(list(data))}" if data else "the request has no columns"
        raise Rejected(400, f"{missing_text(absent)} ({has})", "D107")
    for name in wanted:
        if not isinstance(data[name], list):
            raise Rejected(400, f"column '{name}': expected an array of values, one a row, found {_shown(data[name])}")
    counts = {name: len(data[name]) for name in wanted}
    if len(set(counts.values())) > 1:
        raise Rejected(400, "the columns have different numbers of rows ("
                       + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")", "D103")
    if counts[wanted[0]] > max_rows:
        raise _too_many(counts[wanted[0]], max_rows)
    return {name: data[name] for name in wanted}


def _values(session: Session, name: str, values: list, reading) -> np.ndarray:
    """One input's JSON values as the array a CSV's column would have given predict (ids as int64
    or text, numbers as float64 with NaN for null), for predict's own checks and conversions."""
    shape = _row_shape(session, name)
    if shape != ():
        return _nested(name, values, shape)
    kind = _NUMPY.get(session.inputs[name], object)
    if kind is np.int64:
        return _json_ids(name, values, reading.strip)
    if kind is object:
        return _json_categories(name, values, reading.strip)
    return _json_numbers(name, values, reading)


def _json_ids(name: str, values: list, strip: bool) -> np.ndarray:
    if all(type(v) is int for v in values):
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:  # an id past int64: predict's own check reads it as an unknown id
            pass
    out = np.empty(len(values), dtype=object)
    for k, v in enumerate(values):
        if type(v) is int or type(v) is float and v.is_integer():
            out[k] = int(v)
        elif type(v) is str:
            out[k] = v.strip() if strip else v
        else:
            raise Rejected(400, f"row {k}: column '{name}': expected a whole number (the model's ids are "
                           f"integers), found {_shown(v)}", "D104")
    return out


def _json_categories(name: str, values: list, strip: bool) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for k, v in enumerate(values):
        if type(v) is str:
            out[k] = v.strip() if strip else v
        elif type(v) in (int, float):
            out[k] = str(v)
        else:
            raise Rejected(400, f"row {k}: column '{name}': expected a category (text or a whole number), "
                           f"found {_shown(v)}", "D104")
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
                raise Rejected(400, f"row {k}: column '{name}': expected a number, found {_shown(v)}", "D104") from None
    return out


def _nested(name: str, values: list, shape: tuple | None) -> np.ndarray:
    """Rows that are arrays themselves (a float(784) input, an image's pixels)."""
    def rows_of(s):
        return "one value per row" if s == () else f"rows of shape {s}"

    try:
        arr = np.asarray(values)
    except ValueError:  # ragged
        raise Rejected(400, f"column '{name}': its rows are arrays of different shapes; the model takes "
                       f"{rows_of(shape) if shape is not None else 'rows of one shape'}", "D103") from None
    if arr.dtype.kind not in "iuf":
        raise Rejected(400, f"column '{name}': expected numbers, found {describe_array(arr)}", "D104")
    if shape is not None and tuple(arr.shape[1:]) != shape:
        raise Rejected(400, f"column '{name}': {rows_of(tuple(arr.shape[1:]))}, but the model's column '{name}' "
                       f"takes {rows_of(shape)}", "D103")
    return arr


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

    def __init__(self, session: Session, max_batch: int, max_wait: float):
        self.session, self.max_batch, self.max_wait = session, max_batch, max_wait
        self.run = session.run_bound if session.device == "cuda" else session.run  # IO binding on the GPU
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
                raise Rejected(503, "the server is stopping")
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
    """An output column as JSON texts: a float32 as the shortest decimal that reads back as the same
    float32 (numpy's str), not as a float64's 17 digits; NaN and inf as null (JSON has neither)."""
    if values.dtype.kind == "f":
        texts = values.astype(str)
        finite = np.isfinite(values)
        return (texts if finite.all() else np.where(finite, texts, "null")).tolist()
    if values.dtype.kind in "iu":
        return values.astype(str).tolist()
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
                       "type": dtype, "shape": given.get("shape", _row_shape(session, name))})
    target, kind = meta.get("specc.target"), meta.get("specc.target_kind")
    classes = json.loads(meta.get("specc.vocabs", "{}")).get(target, {}).get("values") if kind == "category" else None
    shapes = {o.name: o.shape for o in session.session.get_outputs()}
    dummy = {name: np.zeros((0, *[d if isinstance(d, int) else len(classes or [0]) for d in shapes[name][1:]]))
             for name in session.outputs}
    return {"model": model, "inputs": inputs, "target": {"name": target, "kind": kind}, "classes": classes,
            "outputs": _output_columns(session, dummy)[0]}


class App:
    """The WSGI application: POST /predict, GET /health, GET /schema; every answer JSON, every
    mistake a 4xx `{"error": ...}` in predict's words, a bug a 500 whose traceback goes to stderr."""

    def __init__(self, session: Session, model: str, max_batch: int = 4096, max_wait_ms: float = 2.0,
                 max_rows: int = 65536):
        self.session, self.model, self.max_rows = session, model, max_rows
        self.schema = {**schema(session, model),
                       "limits": {"max_rows": max_rows, "max_batch": max_batch, "max_wait_ms": max_wait_ms}}
        self.batcher = Batcher(session, max_batch, max_wait_ms / 1000)

    def close(self) -> None:
        self.batcher.close()

    def __call__(self, environ, start_response):
        headers = []
        try:
            status, body = self._route(environ)
        except Rejected as err:
            status, body = err.status, {"error": err.message, **({"code": err.code} if err.code else {})}
            if err.allow:
                headers.append(("Allow", ", ".join(err.allow)))
        except Exception:
            traceback.print_exc(file=sys.stderr)  # the server's log
            status, body = 500, {"error": "internal error in specc serve (a bug: its traceback is in the server's log)"}
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *headers])
        return [payload]

    def _route(self, environ) -> tuple[int, dict | bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path not in ROUTES:
            shown = path if len(path) <= 80 else path[:77] + "..."
            raise Rejected(404, f"no such path '{shown}'; the paths are POST /predict, GET /health and GET /schema")
        if method not in ROUTES[path]:
            raise Rejected(405, f"{path} takes {' or '.join(ROUTES[path])}, not {method}", allow=ROUTES[path])
        if path == "/health":
            if not self.batcher.worker.is_alive():
                raise Rejected(503, "the server is stopping")
            b = self.batcher  # how well requests batch: requests answered, session runs, most in one run
            return 200, {"status": "ok", "model": self.model, "provider": self.session.provider,
                         "requests": b.requests, "runs": b.runs, "largest_batch": b.largest}
        if path == "/schema":
            return 200, self.schema
        return 200, self.predict(environ)

    def predict(self, environ) -> bytes:
        """POST /predict: a JSON body of columns or rows -> the predictions in the same form."""
        media = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if media not in JSON_TYPES and not media.endswith("+json"):
            raise Rejected(415, "expected a JSON body (Content-Type: application/json), found "
                           + (f"'{media}'" if media else "no Content-Type"))
        self.batcher.expect()
        try:
            got, rows_form = read_request(self.session, environ["wsgi.input"].read(), self.max_rows)
        except BaseException:
            self.batcher.unexpect()
            raise
        results = self.batcher.predict(got.feed, got.rows)
        names, columns = _output_columns(self.session, results)
        return answer(names, columns, rows_form)


# ---------------------------------------------------------------- the server


class Server:
    """waitress serving an App on `host`:`port` (0: a free port): `run()` on this thread until
    Ctrl-C (the command), or `start()` and `stop()` on a thread of its own (tests, benchmarks)."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 8000, threads: int = 16):
        from waitress.server import create_server

        self.app = app
        self.server = create_server(app, host=host, port=port, threads=threads, ident="specc",
                                    asyncore_use_poll=True)  # poll(): no select() limit of 1,024 sockets
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
        """Serve until Ctrl-C (waitress stops its threads then), then close the sockets."""
        from waitress import wasyncore

        try:
            self.server.run()
        finally:
            wasyncore.close_all(self._map(), ignore_all=True)

    def start(self) -> Server:
        """Serve on a thread of its own, until `stop`."""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="specc-serve", daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        sockets = self._map()
        while sockets and not self.stopping.is_set():  # waitress's loop, a poll at a time, to stop between
            self.server.asyncore.loop(timeout=0.05, map=sockets, use_poll=True, count=1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server `start` started: its loop ended, its sockets closed, its threads joined."""
        from waitress import wasyncore

        self.stopping.set()
        self.thread.join(timeout)
        wasyncore.close_all(self._map(), ignore_all=True)
        self.server.task_dispatcher.shutdown(timeout=timeout)

    def _map(self) -> dict:
        return getattr(self.server, "map", None) or self.server._map


def _check_options(args) -> None:
    for option, value, least in (("--max-batch", args.max_batch, 1), ("--max-rows", args.max_rows, 1),
                                 ("--max-wait-ms", args.max_wait_ms, 0), ("--port", args.port, 0)):
        if not value >= least or (option == "--max-wait-ms" and not math.isfinite(value)):
            raise UsageError(f"{option} {value:g}: expected a number of at least {least}")
    if args.port > 65535:
        raise UsageError(f"--port {args.port}: expected a port from 0 to 65535 (0: any free one)")


def serve_command(args) -> int:
    """specc serve MODEL.onnx: serve the model over HTTP until Ctrl-C (or SIGTERM)."""
    try:
        import waitress  # noqa: F401  (an extra: pip install 'specc[serve]')
    except ImportError:
        raise UsageError("specc serve needs waitress: pip install 'specc[serve]'") from None
    _check_options(args)
    if not os.path.lexists(args.model):
        raise UsageError(f"{args.model}: no such model file")
    session = load_session(args.model, device=args.device)
    app = App(session, args.model.name, args.max_batch, args.max_wait_ms, args.max_rows)
    try:
        server = Server(app, args.host, args.port, args.threads)
    except OSError as err:  # the port taken, the host not this machine's
        app.close()
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there: "
                         f"{(err.strerror or str(err)).lower()}") from None
    print(f"specc: serving {args.model} on {', '.join(server.urls)} ({session.provider}; batches of up to "
          f"{args.max_batch} rows, {args.max_wait_ms:g} ms wait; {args.threads} threads); Ctrl-C stops", flush=True)
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
    """SIGTERM stops the server as Ctrl-C does (waitress ends its loop on KeyboardInterrupt);
    returns what puts the old handler back. Only the main thread can set one."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)
