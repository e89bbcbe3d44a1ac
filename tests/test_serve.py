"""specc serve: real exported models (a collab model and a classifier, trained once per module)
behind the real waitress server on 127.0.0.1, hit by urllib; answers checked against onnxruntime
in-process and against `specc predict` on the same rows, mistakes against predict's own words."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import MNIST_SAMPLE, ROOT, collab_spec, copy_ratings, mnist_spec
from test_tabular import SPEC as PEOPLE_SPEC, people

from specc.commands.cli import main
from specc.inference.session import Session
from specc.inference.serve import HTTP_CODES, App, Server

pytest.importorskip("waitress")  # the `serve` extra; CI's `test` extra installs it

LIMIT = 30  # seconds: every wait in this file is bounded
STARTING = 300  # seconds for a process to start or stop: a bound a busy machine never reaches, not a wait


@pytest.fixture(scope="module")
def models(ratings_dir, tmp_path_factory) -> dict[str, Path]:
    """model.onnx of a one-epoch collab run (int64 ids), of a tabular classifier (text categories,
    floats with missing values, string labels) and of a digits classifier (784 floats a row)."""
    folder = tmp_path_factory.mktemp("serve")
    copy_ratings(ratings_dir, folder)
    assert main(["train", str(collab_spec(folder)), "--out", str(folder / "collab"), "--quiet",
                 "--set", "train.fit.epochs=1"]) == 0
    (folder / "people.csv").write_text(people())
    (folder / "people.spec").write_text(PEOPLE_SPEC.format(procs="fill_missing, categorify, normalize",
                                                           model="tabular(layers=[16], ps=[0.1])"))
    assert main(["train", str(folder / "people.spec"), "--out", str(folder / "people"), "--quiet",
                 "--set", "train.fit.epochs=1"]) == 0
    assert main(["train", str(mnist_spec(folder, train_rows=256)), "--out", str(folder / "digits"), "--quiet"]) == 0
    return {"collab": folder / "collab" / "model.onnx", "people": folder / "people" / "model.onnx",
            "digits": folder / "digits" / "model.onnx"}


@contextlib.contextmanager
def served(model: Path, threads: int = 8, connections: int | None = None, channel_timeout: int = 30,
           request_timeout: float = 60.0, **limits):
    """The model served on a free port of 127.0.0.1 on a thread; yields (app, base url, server)."""
    app = App(Session(model, device="cpu"), model.name, **limits)
    server = Server(app, "127.0.0.1", 0, threads, connections, channel_timeout, request_timeout).start()
    try:
        yield app, server.url, server
    finally:
        server.stop()
        app.close()


def call(url: str, body=None, method: str | None = None, content_type: str = "application/json"):
    """(status, JSON answer, headers) of one request; `body` a value sent as JSON, or raw bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=LIMIT) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as err:
        with err:
            text = err.read()
        assert b"Traceback" not in text
        return err.code, json.loads(text), err.headers


def without_content_type(url: str, body: bytes):
    """call() with no Content-Type header at all (urllib adds a form's to every POST)."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=LIMIT)
    try:
        connection.request("POST", url[url.index("/", 7):], body)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read()), answer.headers
    finally:
        connection.close()


def predict_csv(model: Path, tmp_path: Path, text: str, capsys) -> tuple[int, str, str]:
    """`specc predict` on a CSV: (exit code, stdout, stderr)."""
    rows = tmp_path / "rows.csv"
    rows.write_text(text)
    capsys.readouterr()
    code = main(["predict", str(model), str(rows)])
    out, err = capsys.readouterr()
    return code, out, err


def six(number) -> str:
    """A number (or predict's CSV text of one) to 6 digits, the least predict's CSV has written."""
    return f"{float(number):.6g}"


def test_collab_predictions_are_onnxruntimes_and_predicts(models, tmp_path, capsys):
    model = models["collab"]
    users, items = [1, 2, 60, 1, 9223372036854775807], [3, 4, 80, 99999, 5]  # an unseen id, int64's largest
    expected = Session(model, device="cpu").run({"user": np.array(users), "item": np.array(items)})["rating"]
    with served(model) as (_, url, _):
        status, got, headers = call(url + "/predict", {"user": users, "item": items, "extra": ["x"]})
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert list(got) == ["rating"]
        assert np.array_equal(np.array(got["rating"], dtype=np.float32), expected)  # the same float32s
        status, rows, _ = call(url + "/predict", [{"item": i, "user": u} for u, i in zip(users, items)])
        assert status == 200 and [r["rating"] for r in rows] == got["rating"]
        # text ids and whole floats read as predict reads them
        status, same, _ = call(url + "/predict", {"user": ["1", 2.0], "item": [3, "4"]})
        assert status == 200 and same["rating"] == got["rating"][:2]
    code, out, _ = predict_csv(model, tmp_path, "user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(users, items)),
                               capsys)
    assert code == 0
    assert [six(line.split(",")[2]) for line in out.splitlines()[1:]] == [six(v) for v in got["rating"]]


def test_classifier_answers_labels_and_probabilities_as_predicts_columns(models, tmp_path, capsys):
    model = models["people"]
    columns = {"job": ["clerk", "?", "astronaut", " nurse "], "city": ["north", "south", "west", "east"],
               "age": [30, None, 20.5, "?"], "hours": [40, 50, 1e3, "41.5"]}  # null and "?": missing
    session = Session(model, device="cpu")
    expected = session.run({"job": np.array(["clerk", "?", "astronaut", "nurse"], dtype=object),
                            "city": np.array(columns["city"], dtype=object),
                            "age": np.array([30, np.nan, 20.5, np.nan], dtype=np.float32),
                            "hours": np.array([40, 50, 1e3, 41.5], dtype=np.float32)})
    with served(model) as (_, url, _):
        status, got, _ = call(url + "/predict", columns)
        assert status == 200
        assert list(got) == ["label", "probability_<=50K", "probability_>50K"]
        assert got["label"] == list(expected["label"])
        assert np.array_equal(np.array([got["probability_<=50K"], got["probability_>50K"]], dtype=np.float32).T,
                              expected["probabilities"])
        status, rows, _ = call(url + "/predict", [dict(zip(columns, row)) for row in zip(*columns.values())])
        assert status == 200 and rows == [dict(zip(got, row)) for row in zip(*got.values())]
    code, out, _ = predict_csv(model, tmp_path, "job,city,age,hours\nclerk,north,30,40\n?,south,?,50\n"
                               "astronaut,west,20.5,1000\n nurse ,east,?,41.5\n", capsys)
    assert code == 0
    assert [[label, six(p), six(q)] for label, p, q in (line.split(",")[4:] for line in out.splitlines()[1:])] == \
        [[label, six(p), six(q)] for label, p, q in zip(*got.values())]


def test_an_input_of_arrays_takes_a_nested_array_a_row(models):
    model = models["digits"]
    with np.load(MNIST_SAMPLE) as data:
        pixels = data["x_valid"][:3].reshape(3, 784)
    want = Session(model, device="cpu").run({"x": pixels.astype(np.float32)})
    with served(model) as (app, url, _):
        status, got, _ = call(url + "/predict", {"x": pixels.tolist()})
        assert status == 200 and got["y"] == want["y"].tolist()  # the target's name, as predict's CSV column
        assert np.array_equal(np.array([got[f"probability_{c}"] for c in range(10)], np.float32).T,
                              want["probabilities"])
        deep = f'{{"x": [{nested(70)}]}}'.encode()  # numpy takes 64 dimensions, then speaks of shapes
        assert call(url + "/predict", deep)[:2] == (400, {
            "error": "column 'x': its rows are arrays nested 70 levels deep; the model takes rows of shape (784,)",
            "code": "D103"})
        assert call(url + "/predict", {"x": [[0] * 783]})[:2] == (400, {
            "error": "column 'x': rows of shape (783,), but the model's column 'x' takes rows of shape (784,)",
            "code": "D103"})
        assert app.max_body == 1000 * 10 ** 6  # 65,536 rows of 784 values would be 1.66 GB: the cap's own cap


def test_health_and_schema(models):
    with served(models["people"], max_rows=100) as (_, url, _):
        assert call(url + "/health")[:2] == (200, {"status": "ok", "model": "model.onnx",
                                                   "provider": "CPUExecutionProvider", "requests": 0, "runs": 0,
                                                   "largest_batch": 0})
        status, schema, _ = call(url + "/schema")
    assert status == 200
    assert schema["inputs"] == [{"name": "job", "kind": "category", "type": "string", "shape": []},
                                {"name": "city", "kind": "category", "type": "string", "shape": []},
                                {"name": "age", "kind": "float", "type": "float", "shape": []},
                                {"name": "hours", "kind": "float", "type": "float", "shape": []}]
    assert schema["target"] == {"name": "label", "kind": "category"} and schema["classes"] == ["<=50K", ">50K"]
    assert schema["outputs"] == ["label", "probability_<=50K", "probability_>50K"]
    assert schema["limits"]["max_rows"] == 100
    with served(models["collab"]) as (_, url, _):
        status, schema, _ = call(url + "/schema")
    assert [(i["name"], i["type"]) for i in schema["inputs"]] == [("user", "int64"), ("item", "int64")]
    assert schema["target"] == {"name": "rating", "kind": "float"} and schema["classes"] is None
    assert schema["outputs"] == ["rating"]


def _after_column(message: str) -> str:
    """A message from `column 'x': ` on: the words, without where they were found."""
    return message[message.index("column '"):].strip()


@pytest.mark.parametrize("model, csv_text, body", [
    ("collab", "user,item\n1,abc\n", {"user": [1], "item": ["abc"]}),
    ("collab", "user,item\n1,2.5\n", [{"user": 1, "item": "2.5"}]),
    ("people", "job,city,age,hours\nclerk,north,abc,40\n", {"job": ["clerk"], "city": ["north"], "age": ["abc"],
                                                            "hours": [40]}),
    ("people", "job,city,age,hours\nclerk,north,30,inf\n", {"job": ["clerk"], "city": ["north"], "age": [30],
                                                            "hours": [float("inf")]}),
    ("people", "job,city,age,hours\nclerk,north,1e39,40\n", {"job": ["clerk"], "city": ["north"], "age": [1e39],
                                                             "hours": [40]}),
])
def test_a_wrong_value_is_a_400_in_predicts_words(models, tmp_path, capsys, model, csv_text, body):
    code, _, err = predict_csv(models[model], tmp_path, csv_text, capsys)
    assert code == 1
    with served(models[model]) as (_, url, _):
        status, got, _ = call(url + "/predict", body)
    assert status == 400 and got["error"].startswith("row 0: column '")
    assert _after_column(got["error"]) == _after_column(err.split("error[")[1])
    assert got["code"] == re.search(r"error\[(D\d+)\]", err)[1]


def test_a_missing_column_is_a_400_in_predicts_words(models, tmp_path, capsys):
    code, _, err = predict_csv(models["collab"], tmp_path, "user\n1\n", capsys)
    assert code == 1 and "missing input column 'item' (the header has: user)" in err
    with served(models["collab"]) as (_, url, _):
        assert call(url + "/predict", {"user": [1]})[:2] == \
            (400, {"error": "missing input column 'item' (the request has: user)", "code": "D107"})
        assert call(url + "/predict", {})[:2] == \
            (400, {"error": "missing input columns 'user', 'item' (the request has no columns)", "code": "D107"})
        assert call(url + "/predict", [{"user": 1, "item": 2}, {"user": 1}])[:2] == \
            (400, {"error": "row 1: missing input column 'item' (the row has: user)", "code": "D107"})


def test_text_that_is_not_utf8_is_a_400_of_its_own_code(models):
    """JSON may escape a lone surrogate, which is no UTF-8 text (onnxruntime takes none): predict's
    D121, a sub-code of the D102 it once was; the answer shows the code alone, as predict does."""
    body = rb'{"job": ["clerk", "\udcff"], "city": ["north", "north"], "age": [30, 40], "hours": [40, 40]}'
    with served(models["people"]) as (app, url, _):
        assert call(url + "/predict", body)[:2] == \
            (400, {"error": "row 1: column 'job': holds a string that is not UTF-8 text ('\\xff')", "code": "D121"})
        assert app.batcher.requests == 0  # nothing reached the model


def nested(depth: int) -> str:
    """JSON text: 1 inside `depth` arrays (as text: json.dumps of it from a test's frame would go too deep)."""
    return "[" * depth + "1" + "]" * depth


def test_malformed_requests_are_4xx_with_a_json_error_and_code(models, capsys):
    deep = b"[" * 100000 + b"]" * 100000
    with served(models["collab"], max_rows=3, max_body=len(deep)) as (app, url, _):
        predict = url + "/predict"
        whole = "row 0: column 'user': expected a whole number (the model's ids are integers), found "
        cases = [
            (call(predict, b'{"user": [1], "item": [2]'), 400, "H101", "the request body is not valid JSON: "),
            (call(predict, deep), 400, "H101", "the request body is not valid JSON: "),
            (call(predict, b"\xff\xfe\x00"), 400, "H101", "the request body is not valid JSON: "),
            (call(predict, b'{"user": [' + b"1" * 5000 + b'], "item": [2]}'), 400, "H101",
             "the request body is not valid JSON: "),
            (call(predict, b""), 400, "H102", "the request body is empty; expected the inputs as JSON"),
            (call(predict, b'{"user": [1], "item": [2]}', content_type="text/csv"), 415, "H107",
             "expected a JSON body (Content-Type: application/json), found 'text/csv'"),
            (without_content_type(predict, b'{"user": [1], "item": [2]}'), 415, "H107",
             "expected a JSON body (Content-Type: application/json), found no Content-Type"),
            (call(predict, 5), 400, "H103", 'expected the inputs as columns ({"name": [value, ...], ...}) or as rows '
                                            '([{"name": value, ...}, ...]), found a number'),
            (call(predict, [1]), 400, "H103", "row 0: expected an object of column values, found 1"),
            (call(predict, f"[{nested(900)}]".encode()), 400, "H103",
             "row 0: expected an object of column values, found [[[[["),
            (call(predict, {"user": 1, "item": [2]}), 400, "H103",
             "column 'user': expected an array of values, one a row, found 1"),
            (call(predict, {"user": [1, 2], "item": [2]}), 400, "D103",
             "the columns have different numbers of rows (user: 2, item: 1)"),
            (call(predict, {"user": [], "item": []}), 400, "D122", "the request has no rows"),
            (call(predict, {"user": [None], "item": [2]}), 400, "D104", whole + "null"),
            (call(predict, {"user": [True], "item": [2]}), 400, "D104", whole + "true"),
            (call(predict, f'{{"user": [{nested(900)}], "item": [2]}}'.encode()), 400, "D104", whole + "[[[[["),
            (call(predict, {"user": [1] * 4, "item": [2] * 4}), 413, "H104",
             "the request has 4 rows; this server takes at most 3 a request (--max-rows)"),
            (call(predict, [{"user": 1, "item": 2}] * 4), 413, "H104",
             "the request has 4 rows; this server takes at most 3 a request (--max-rows)"),
            (call(url + "/nowhere"), 404, "H201", "no such path '/nowhere'; the paths are POST /predict, GET /health "
                                                  "and GET /schema"),
            (call(url + "/health", b"{}"), 405, "H202", "/health takes GET or HEAD, not POST"),
        ]
        for (status, got, headers), want_status, code, want in cases:
            assert (status, got["code"], got["error"][:len(want)]) == (want_status, code, want)
            assert set(got) == {"error", "code"} and headers["Content-Type"] == "application/json"
        for depth in range(940, 1001):  # where json.loads still reads it but json.dumps, deeper down, would not
            for text in (f"[{nested(depth)}]", f'{{"user": [{nested(depth)}], "item": [2]}}'):
                status, got, _ = call(predict, text.encode())
                assert status == 400 and got["code"] in ("H101", "H103", "D104")
        assert call(predict)[2]["Allow"] == "POST"
        assert call(predict, {"user": [1], "item": [2]})[0] == 200  # and it still answers
        assert app.batcher.worker.is_alive()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("body, at", [
    ({"user": [1.5], "item": [2]}, "row 0: column 'user'"),
    ([{"user": 1, "item": 2}, {"user": 3, "item": 2.5}], "row 1: column 'item'"),
    ({"user": [1, 2], "item": [-0.5, 3]}, "row 0: column 'item'"),
])
def test_a_fractional_id_is_refused_as_predict_refuses_one(models, tmp_path, capsys, body, at):
    """Not cut to a whole id (1.5 read as 1): predict's D104 in its words; the value shown as the
    JSON number it was (predict shows a CSV's cell as text: '1.5')."""
    code, _, err = predict_csv(models["collab"], tmp_path, "user,item\n1.5,2\n", capsys)
    assert code == 1 and "error[D104]: column 'user': expected a whole number (the model's ids are integers), " \
                          "found '1.5'" in err
    value = next(v for row in (body if isinstance(body, list) else [dict(zip(body, r)) for r in zip(*body.values())])
                 for v in row.values() if v != int(v))
    with served(models["collab"]) as (app, url, _):
        assert call(url + "/predict", body)[:2] == \
            (400, {"error": f"{at}: expected a whole number (the model's ids are integers), found {value}",
                   "code": "D104"})
        assert app.batcher.requests == 0  # nothing reached the model


def test_a_bug_is_a_500_without_traceback_and_the_traceback_goes_to_the_log(models, capsys):
    with served(models["collab"]) as (app, url, _):
        def broken(feed):
            raise ZeroDivisionError("a bug")

        app.batcher.run = broken  # a fault in specc's own code, not onnxruntime's
        status, got, _ = call(url + "/predict", {"user": [1], "item": [2]})
        assert status == 500 and "traceback" in got["error"] and "ZeroDivision" not in json.dumps(got)
        assert call(url + "/health")[0] == 200
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_concurrent_clients_get_their_own_rows_and_are_batched(models):
    model = models["collab"]
    session = Session(model, device="cpu")
    clients = 12
    with served(model, threads=clients, max_wait_ms=100) as (app, url, _):
        for _ in range(5):  # a round where no two requests meet in a batch is possible, but rare
            gate = threading.Barrier(clients, timeout=LIMIT)
            answers: dict[int, list] = {}

            def client(k):
                users = [(k * 7 + j) % 60 + 1 for j in range(k + 1)]  # k + 1 rows of its own
                items = [(k * 11 + 3 * j) % 80 + 1 for j in range(k + 1)]
                gate.wait()
                status, got, _ = call(url + "/predict", [{"user": u, "item": i} for u, i in zip(users, items)])
                want = session.run({"user": np.array(users), "item": np.array(items)})["rating"]
                answers[k] = [status == 200, np.array_equal(np.array([r["rating"] for r in got], np.float32), want)]

            threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(LIMIT)
            assert answers == {k: [True, True] for k in range(clients)}
            if app.batcher.largest > 1:
                break
        assert app.batcher.largest > 1 and app.batcher.runs < app.batcher.requests


def test_the_batcher_joins_requests_up_to_max_batch_and_runs_a_larger_one_alone(models):
    session = Session(models["collab"], device="cpu")
    app = App(session, "model.onnx", max_batch=4, max_wait_ms=10_000)
    sizes = [2, 2, 10]
    feeds = [{"user": np.arange(1, n + 1), "item": np.arange(n, 0, -1)} for n in sizes]
    got: dict[int, np.ndarray] = {}
    try:
        for _ in sizes:  # all three announced: the first batch waits for the second (4 rows), not the third
            app.batcher.expect()

        def client(k):
            got[k] = app.batcher.predict(feeds[k], sizes[k])["rating"]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for k, t in enumerate(threads):  # queued in this order: each waits until the one before is in
            t.start()
            deadline = time.monotonic() + LIMIT
            while app.batcher.arriving > 2 - k and time.monotonic() < deadline:
                time.sleep(0.001)
        for t in threads:
            t.join(LIMIT)
    finally:
        app.close()
    assert (app.batcher.runs, app.batcher.requests, app.batcher.largest) == (2, 3, 2)
    for k in range(3):
        assert np.array_equal(got[k], session.run(feeds[k])["rating"])


# ---------------------------------------------------------------- hostile clients, on raw sockets

SLOW = 300  # three times waitress's default connection limit, which let no other request in while they stayed
HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
BODY = b'{"user": [1, 2], "item": [3, 4]}'


def address(url: str) -> tuple[str, int]:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    return host, int(port)


def answers(sock: socket.socket, count: int = 1) -> list[tuple[int, dict, dict]]:
    """The next `count` answers on a raw connection: (status, JSON body, headers named in lowercase)."""
    stream = sock.makefile("rb")
    got = []
    for _ in range(count):
        line = stream.readline()
        assert line, "the server closed the connection without an answer"
        headers = {}
        while (header := stream.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        got.append((int(line.split()[1]), json.loads(stream.read(int(headers["content-length"]))), headers))
    return got


def exchange(url: str, data: bytes) -> tuple[int, dict, dict]:
    """Send raw bytes on a connection of their own; its first answer."""
    with socket.create_connection(address(url), timeout=LIMIT) as sock:
        sock.sendall(data)
        return answers(sock)[0]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes this connection (reading until it does, for up to LIMIT seconds)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {LIMIT} s for {what}"
        time.sleep(0.01)


def test_slow_clients_do_not_keep_valid_requests_waiting(models):
    """The acceptance test of issue 22: 300 connections trickling their headers (a slowloris), while
    valid requests, one at a time and 32 at once, are answered. bench/serve.py --slow measures how fast."""
    model = models["collab"]
    want = Session(model, device="cpu").run({"user": np.array([1, 2]), "item": np.array([3, 4])})["rating"]
    stop = threading.Event()
    with served(model, threads=4, request_timeout=3600) as (_, url, server), contextlib.ExitStack() as stack:
        slow = [stack.enter_context(socket.create_connection(address(url), timeout=LIMIT)) for _ in range(SLOW)]
        for sock in slow:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        def trickle():  # a header line on each, twice a second: never silent, never done
            for n in range(10 ** 6):
                if stop.wait(0.5):
                    return
                for sock in slow:
                    sock.sendall(f"X-Slow-{n}: 1\r\n".encode())

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            wait_for(lambda: len(server.server.active_channels) >= SLOW, f"the {SLOW} slow connections to be open")
            for _ in range(20):
                status, got, _ = call(url + "/predict", {"user": [1, 2], "item": [3, 4]})
                assert status == 200 and np.array_equal(np.array(got["rating"], np.float32), want)
            together: list[int] = []
            clients = [threading.Thread(target=lambda: together.append(call(url + "/health")[0])) for _ in range(32)]
            for client in clients:
                client.start()
            for client in clients:
                client.join(LIMIT)
            assert together == [200] * 32
            assert len(server.server.active_channels) >= SLOW  # still open, still sending headers
        finally:
            stop.set()
            trickler.join(LIMIT)


@pytest.mark.parametrize("first, trickled", [
    (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n"),  # headers, a line at a time
    (HEAD + b"Content-Length: 100\r\n\r\n{", b" "),  # a body, a byte at a time
    (HEAD + b"Content-Length: 100\r\n\r\n" + BODY, None),  # a Content-Length larger than what is sent
])
def test_a_request_that_does_not_arrive_whole_in_time_is_a_408(models, first, trickled):
    with served(models["collab"], request_timeout=1) as (_, url, _), \
            socket.create_connection(address(url), timeout=LIMIT) as sock:
        sock.sendall(first)
        stop = threading.Event()

        def trickle():
            while trickled and not stop.wait(0.1):
                try:
                    sock.sendall(trickled)
                except OSError:  # closed by the server
                    return

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            status, got, headers = answers(sock)[0]
        finally:
            stop.set()
            trickler.join(LIMIT)
        assert (status, got) == (408, {"error": "the request did not arrive whole within 1 s of its first byte "
                                                "(--request-timeout)", "code": "H302"})
        assert headers["connection"] == "close" and closed_by_server(sock)
        assert call(url + "/health")[0] == 200


def test_a_silent_connection_is_closed_after_the_channel_timeout(models):
    with served(models["collab"], channel_timeout=1) as (_, url, _):
        with socket.create_connection(address(url), timeout=LIMIT) as silent:
            assert closed_by_server(silent)
        with socket.create_connection(address(url), timeout=LIMIT) as kept_alive:
            kept_alive.sendall(HEAD + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
            assert answers(kept_alive)[0][0] == 200
            assert closed_by_server(kept_alive)  # idle after its answer


def test_lying_and_oversized_requests_are_answered_in_json(models, capsys):
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    with served(models["collab"], max_body=2000) as (app, url, _):
        too_large = {"error": "the request body is larger than this server takes: at most 2,000 bytes (--max-body-mb)",
                     "code": "H105"}
        # refused by its Content-Length, before a byte of the body is sent (a 100 MB body was read whole)
        assert exchange(url, HEAD + b"Content-Length: 100000000\r\n\r\n")[:2] == \
            (413, {**too_large, "error": too_large["error"].replace("body is", "body of 100,000,000 bytes is")})
        assert exchange(url, chunked + b"3e8\r\n" + b" " * 1000 + b"\r\n" + b"3e8\r\n" + b" " * 1000 + b"\r\n")[:2] == \
            (413, too_large)
        assert exchange(url, chunked + b"d\r\n" + BODY[:13] + b"\r\n" + hex(len(BODY) - 13)[2:].encode() + b"\r\n"
                        + BODY[13:] + b"\r\n0\r\n\r\n")[0] == 200  # chunked, under the cap
        with socket.create_connection(address(url), timeout=LIMIT) as sock:  # a Content-Length shorter than the body
            sock.sendall(HEAD + b"Content-Length: 5\r\n\r\n" + BODY)
            status, got, _ = answers(sock)[0]
            assert (status, got["code"], got["error"][:35]) == (400, "H101", "the request body is not valid JSON:")
        malformed = "a malformed HTTP request (waitress's parser: "
        for data, status, code, error in [
            (chunked + b"zz\r\n", 400, "H301", malformed + "Invalid chunk size)"),
            (HEAD + b"Content-Length: abc\r\n\r\n", 400, "H301", malformed + "Content-Length is invalid)"),
            (HEAD + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 400, "H301",
             malformed + "Content-Length is invalid (too many digits))"),
            (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "H301", malformed + "Content-Length is "
                                                                                     "invalid)"),
            (b"GET http://[::1/health HTTP/1.1\r\n\r\n", 400, "H301", malformed + "invalid request line or header "
                                                                                  "(Invalid IPv6 URL))"),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "H301", malformed + "Start line is "
                                                                                                "invalid)"),
            (HEAD + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, "H303",
             "the request line and headers are larger than this server takes: at most 65,536 bytes"),
            (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 501, "H304",
             "a Transfer-Encoding this server does not take: send the body as it is, or chunked"),
            (HEAD + b"\r\n", 411, "H106", "the request has no body: send the inputs as JSON with a Content-Length "
                                          "(or chunked)"),
            (HEAD + b"Content-Length: 0\r\n\r\n", 400, "H102", "the request body is empty; expected the inputs as JSON"),
        ]:
            assert exchange(url, data)[:2] == (status, {"error": error, "code": code})
        assert call(url + "/predict", {"user": [1], "item": [2]})[0] == 200  # and it still answers
    assert "Traceback" not in capsys.readouterr().err


def test_the_body_cap_follows_max_rows_and_the_models_inputs(models):
    with served(models["collab"], max_rows=10) as (app, url, _):  # 2 inputs: 256 + 2 * 32 bytes a row
        assert app.max_body == 3200 and call(url + "/schema")[1]["limits"]["max_body_bytes"] == 3200
    with served(models["people"]) as (app, _, _):  # 4 inputs, 65,536 rows
        assert app.max_body == 65536 * (256 + 4 * 32)
    body = json.dumps({"user": [1, 2], "item": [3, 4], "padding": "x" * 100}).encode()
    with served(models["collab"], max_body=len(body)) as (_, url, _):  # a body of exactly the cap is taken
        assert call(url + "/predict", body)[0] == 200
        assert call(url + "/predict", body + b" ")[:2] == (413, {
            "error": f"the request body of {len(body) + 1} bytes is larger than this server takes: at most "
                     f"{len(body)} bytes (--max-body-mb)", "code": "H105"})


def test_every_code_has_its_row_in_the_readme():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(H\d+)` \| (\d+) \| (.*) \|$", text, re.M)
    assert rows == [(c.code, str(c.status), c.meaning) for c in HTTP_CODES]
    assert len({c.code for c in HTTP_CODES}) == len(HTTP_CODES)


def _serve_process(model: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`specc serve` in a process of its own on a free port, once it has said where it listens;
    (the process, its URL from that first line)."""
    proc = subprocess.Popen([sys.executable, "-m", "specc", "serve", str(model), "--port", "0", *options],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})  # a SyntaxWarning of a module
    # compiled afresh (another change to the tree) is no word of the server's
    first: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: first.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = first.get(timeout=STARTING)  # the line, or "" when the process ends without one
    except queue.Empty:
        line = ""
    if not line:
        proc.kill()
        raise AssertionError(f"specc serve did not start: {proc.communicate(timeout=STARTING)[1]}")
    return proc, re.search(r"on (http://127\.0\.0\.1:\d+) ", line)[1]


def _stopped_by(proc: subprocess.Popen, signum: int) -> str:
    """Send the signal; once the process has ended (a condition, bounded by STARTING), its stderr."""
    proc.send_signal(signum)
    try:
        return proc.communicate(timeout=STARTING)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"specc serve did not stop on signal {signum}: {proc.communicate()[1]}") from None


def test_the_command_serves_until_ctrl_c(models):
    proc, url = _serve_process(models["collab"], "--max-rows", "2", "--threads", "2")
    try:
        status, got, _ = call(url + "/predict", {"user": [1, 2], "item": [3, 4]})
        assert status == 200 and len(got["rating"]) == 2
        assert call(url + "/health")[:2] == (200, {"status": "ok", "model": "model.onnx",
                                                   "provider": "CPUExecutionProvider", "requests": 1, "runs": 1,
                                                   "largest_batch": 1})
        assert call(url + "/predict", {"user": [1, 2, 3], "item": [3, 4, 5]})[0] == 413
    finally:
        err = _stopped_by(proc, signal.SIGINT)  # (after answers, so it lands in the serving loop)
    assert (proc.returncode, err) == (0, "specc: stopped\n")


def test_sigterm_stops_it_too(models):
    proc, url = _serve_process(models["collab"])
    assert call(url + "/health")[0] == 200  # answered: the loop, and the SIGTERM handler set before it, are up
    err = _stopped_by(proc, signal.SIGTERM)
    assert (proc.returncode, err) == (0, "specc: stopped\n")


@pytest.mark.parametrize("options, message", [
    (["--max-rows", "0"], "--max-rows 0: expected a number of at least 1"),
    (["--max-batch", "-" + "9" * 400], f"--max-batch -{'9' * 400}: expected a number of at least 1"),
    (["--max-wait-ms", "nan"], "--max-wait-ms nan: expected a number from 0 to 60,000"),
    (["--max-wait-ms", "-1"], "--max-wait-ms -1: expected a number from 0 to 60,000"),
    (["--max-wait-ms", "1e13"], "--max-wait-ms 1e+13: expected a number from 0 to 60,000"),  # past threading's
    (["--max-wait-ms", "inf"], "--max-wait-ms inf: expected a number from 0 to 60,000"),    # TIMEOUT_MAX
    (["--threads", "2000"], "--threads 2000: expected a number from 1 to 1,024"),
    (["--connection-limit", "0"], "--connection-limit 0: expected a number of at least 1"),
    (["--channel-timeout", "0"], "--channel-timeout 0: expected a number from 1 to 86,400"),
    (["--channel-timeout", "9" * 400], f"--channel-timeout {'9' * 400}: expected a number from 1 to 86,400"),
    (["--request-timeout", "-5"], "--request-timeout -5: expected a number from 1 to 86,400"),
    (["--request-timeout", "inf"], "--request-timeout inf: expected a number from 1 to 86,400"),
    (["--request-timeout", "nan"], "--request-timeout nan: expected a number from 1 to 86,400"),
    (["--max-body-mb", "0"], "--max-body-mb 0: expected a number from 0.001 to 1,000"),
    (["--max-body-mb", "1e9"], "--max-body-mb 1e+09: expected a number from 0.001 to 1,000"),
    (["--max-body-mb", "nan"], "--max-body-mb nan: expected a number from 0.001 to 1,000"),
    (["--port", "70000"], "--port 70000: expected a port from 0 to 65535 (0: any free one)"),
    (["--port", "-1"], "--port -1: expected a port from 0 to 65535 (0: any free one)"),
])
def test_absurd_options_are_usage_errors(models, capsys, options, message):
    assert main(["serve", str(models["collab"]), *options]) == 2
    assert capsys.readouterr().err == f"specc: error: {message}\n"


def test_a_connection_limit_past_the_open_file_limit_is_a_usage_error(models, capsys):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    assert main(["serve", str(models["collab"]), "--connection-limit", str(hard)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specc: error: --connection-limit {hard}: a connection may hold 3 open files and this "
                          f"process may open {hard} (ulimit -n), room for ")
    assert err.endswith(" connections beside 16 threads; lower --connection-limit or raise ulimit -n\n")


def test_usage_errors(models, capsys, monkeypatch):
    model = str(models["collab"])
    for threads in ("0", "100000"):  # the CLI's own bounds on --threads (serve's: 1,024, above)
        assert main(["serve", model, "--threads", threads]) == 2
        assert "argument --threads: expected a whole number of threads of at " in capsys.readouterr().err
    assert main(["serve", "nowhere.onnx"]) == 2
    assert capsys.readouterr().err == "specc: error: nowhere.onnx: no such model file\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", model, "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"specc: error: --host 127.0.0.1 --port {port}: cannot listen there: "
                                       "address already in use\n")
    monkeypatch.setitem(sys.modules, "waitress", None)  # as if the extra were not installed
    assert main(["serve", model]) == 2
    assert capsys.readouterr().err == "specc: error: specc serve needs waitress: pip install 'specc[serve]'\n"
