"""specc serve: real exported models (a collab model and a classifier, trained once per module)
behind the real waitress server on 127.0.0.1, hit by urllib; answers checked against onnxruntime
in-process and against `specc predict` on the same rows, mistakes against predict's own words."""

from __future__ import annotations

import contextlib
import http.client
import json
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
from helpers import ROOT, collab_spec, copy_ratings
from test_tabular import SPEC as PEOPLE_SPEC, people

from specc.cli import main
from specc.infer import Session
from specc.serve import App, Server

pytest.importorskip("waitress")  # the `serve` extra; CI's `test` extra installs it

LIMIT = 30  # seconds: every wait in this file is bounded


@pytest.fixture(scope="module")
def models(ratings_dir, tmp_path_factory) -> dict[str, Path]:
    """model.onnx of a one-epoch collab run (int64 ids) and of a tabular classifier (text
    categories, floats with missing values, string labels)."""
    folder = tmp_path_factory.mktemp("serve")
    copy_ratings(ratings_dir, folder)
    assert main(["train", str(collab_spec(folder)), "--out", str(folder / "collab"), "--quiet",
                 "--set", "train.fit.epochs=1"]) == 0
    (folder / "people.csv").write_text(people())
    (folder / "people.spec").write_text(PEOPLE_SPEC.format(procs="fill_missing, categorify, normalize",
                                                           model="tabular(layers=[16], ps=[0.1])"))
    assert main(["train", str(folder / "people.spec"), "--out", str(folder / "people"), "--quiet",
                 "--set", "train.fit.epochs=1"]) == 0
    return {"collab": folder / "collab" / "model.onnx", "people": folder / "people" / "model.onnx"}


@contextlib.contextmanager
def served(model: Path, threads: int = 8, **limits):
    """The model served on a free port of 127.0.0.1 on a thread; yields (app, base url)."""
    app = App(Session(model, device="cpu"), model.name, **limits)
    server = Server(app, "127.0.0.1", 0, threads).start()
    try:
        yield app, server.url
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


def test_collab_predictions_are_onnxruntimes_and_predicts(models, tmp_path, capsys):
    model = models["collab"]
    users, items = [1, 2, 60, 1, 9223372036854775807], [3, 4, 80, 99999, 5]  # an unseen id, int64's largest
    expected = Session(model, device="cpu").run({"user": np.array(users), "item": np.array(items)})["rating"]
    with served(model) as (_, url):
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
    assert [line.split(",")[2] for line in out.splitlines()[1:]] == [f"{v:.6g}" for v in got["rating"]]


def test_classifier_answers_labels_and_probabilities_as_predicts_columns(models, tmp_path, capsys):
    model = models["people"]
    columns = {"job": ["clerk", "?", "astronaut", " nurse "], "city": ["north", "south", "west", "east"],
               "age": [30, None, 20.5, "?"], "hours": [40, 50, 1e3, "41.5"]}  # null and "?": missing
    session = Session(model, device="cpu")
    expected = session.run({"job": np.array(["clerk", "?", "astronaut", "nurse"], dtype=object),
                            "city": np.array(columns["city"], dtype=object),
                            "age": np.array([30, np.nan, 20.5, np.nan], dtype=np.float32),
                            "hours": np.array([40, 50, 1e3, 41.5], dtype=np.float32)})
    with served(model) as (_, url):
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
    assert [line.split(",")[4:] for line in out.splitlines()[1:]] == \
        [[label, f"{p:.6g}", f"{q:.6g}"] for label, p, q in zip(*got.values())]


def test_health_and_schema(models):
    with served(models["people"], max_rows=100) as (_, url):
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
    with served(models["collab"]) as (_, url):
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
    with served(models[model]) as (_, url):
        status, got, _ = call(url + "/predict", body)
    assert status == 400 and got["error"].startswith("row 0: column '")
    assert _after_column(got["error"]) == _after_column(err.split("error[")[1])
    assert got["code"] == re.search(r"error\[(D\d+)\]", err)[1]


def test_a_missing_column_is_a_400_in_predicts_words(models, tmp_path, capsys):
    code, _, err = predict_csv(models["collab"], tmp_path, "user\n1\n", capsys)
    assert code == 1 and "missing input column 'item' (the header has: user)" in err
    with served(models["collab"]) as (_, url):
        assert call(url + "/predict", {"user": [1]})[:2] == \
            (400, {"error": "missing input column 'item' (the request has: user)", "code": "D107"})
        assert call(url + "/predict", {})[:2] == \
            (400, {"error": "missing input columns 'user', 'item' (the request has no columns)", "code": "D107"})
        assert call(url + "/predict", [{"user": 1, "item": 2}, {"user": 1}])[:2] == \
            (400, {"error": "row 1: missing input column 'item' (the row has: user)", "code": "D107"})


def test_malformed_requests_are_4xx_with_a_json_error(models, capsys):
    with served(models["collab"], max_rows=3) as (app, url):
        predict = url + "/predict"
        cases = [
            (call(predict, b'{"user": [1], "item": [2]'), 400, "the request body is not valid JSON: "),
            (call(predict, b"[" * 100000 + b"]" * 100000), 400, "the request body is not valid JSON: "),
            (call(predict, b"\xff\xfe\x00"), 400, "the request body is not valid JSON: "),
            (call(predict, b'{"user": [1], "item": [2]}', content_type="text/csv"), 415,
             "expected a JSON body (Content-Type: application/json), found 'text/csv'"),
            (without_content_type(predict, b'{"user": [1], "item": [2]}'), 415,
             "expected a JSON body (Content-Type: application/json), found no Content-Type"),
            (call(predict, 5), 400, 'expected the inputs as columns ({"name": [value, ...], ...}) or as rows '
                                    '([{"name": value, ...}, ...]), found a number'),
            (call(predict, [1]), 400, "row 0: expected an object of column values, found 1"),
            (call(predict, {"user": 1, "item": [2]}), 400, "column 'user': expected an array of values, one a row, "
                                                           "found 1"),
            (call(predict, {"user": [1, 2], "item": [2]}), 400, "the columns have different numbers of rows "
                                                                "(user: 2, item: 1)"),
            (call(predict, {"user": [], "item": []}), 400, "the request has no rows"),
            (call(predict, {"user": [None], "item": [2]}), 400, "row 0: column 'user': expected a whole number (the "
                                                                "model's ids are integers), found null"),
            (call(predict, {"user": [True], "item": [2]}), 400, "row 0: column 'user': expected a whole number (the "
                                                                "model's ids are integers), found true"),
            (call(predict, {"user": [1] * 4, "item": [2] * 4}), 413,
             "the request has 4 rows; this server takes at most 3 a request (--max-rows)"),
            (call(predict, [{"user": 1, "item": 2}] * 4), 413,
             "the request has 4 rows; this server takes at most 3 a request (--max-rows)"),
            (call(url + "/nowhere"), 404, "no such path '/nowhere'; the paths are POST /predict, GET /health and "
                                          "GET /schema"),
            (call(url + "/health", b"{}"), 405, "/health takes GET or HEAD, not POST"),
        ]
        for (status, got, _), want_status, want in cases:
            assert (status, got["error"][:len(want)]) == (want_status, want)
        assert call(predict)[2]["Allow"] == "POST"
        assert call(predict, {"user": [1], "item": [2]})[0] == 200  # and it still answers
        assert app.batcher.worker.is_alive()
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_is_a_500_without_traceback_and_the_traceback_goes_to_the_log(models, capsys):
    with served(models["collab"]) as (app, url):
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
    with served(model, threads=clients, max_wait_ms=100) as (app, url):
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


def _serve_process(model: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`specc serve` in a process of its own on a free port; (the process, its URL from its first line)."""
    proc = subprocess.Popen([sys.executable, "-m", "specc", "serve", str(model), "--port", "0", *options],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(LIMIT)
    if not line or not line[0]:
        proc.kill()
        raise AssertionError(f"specc serve did not start: {proc.communicate(timeout=LIMIT)[1]}")
    return proc, re.search(r"on (http://127\.0\.0\.1:\d+) ", line[0])[1]


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
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 0 and err == "specc: stopped\n"


def test_sigterm_stops_it_too(models):
    proc, url = _serve_process(models["collab"])
    assert call(url + "/health")[0] == 200
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 0 and err == "specc: stopped\n"


def test_usage_errors(models, capsys, monkeypatch):
    model = str(models["collab"])
    assert main(["serve", model, "--port", "70000"]) == 2
    assert capsys.readouterr().err == "specc: error: --port 70000: expected a port from 0 to 65535 (0: any free one)\n"
    assert main(["serve", model, "--max-batch", "0"]) == 2
    assert capsys.readouterr().err == "specc: error: --max-batch 0: expected a number of at least 1\n"
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
