"""Serving throughput: `specc serve` over loopback against the same onnxruntime session called in-process.

Trains specs/collab.spec for one epoch into a temporary folder, then, for each request size (rows a
request) and each number of concurrent clients (1, 8, 64), for a fixed time each (default 5 s):
  - served: the model behind specc.inference.serve's App on waitress, in a process of its own (the CLI's
    defaults: 16 threads, batches of up to 4,096 rows, 2 ms wait), each client a thread of this
    process with its own keep-alive http.client connection, POSTing the same JSON body of random
    (user, item) ids in a loop;
  - in-process: as many threads calling Session.run on the same rows as numpy arrays.
Both sessions are pinned to one onnxruntime thread (the machine is small and shared); the order of
the two sides alternates from one level to the next. Reports rows/s, requests/s and the p50 and p99
latency of a request, and for the server how many requests each session run held on average.

    python bench/serve.py [--seconds 5] [--sizes 1 256] [--clients 1 8 64] [--json PATH]

With --slow N it measures instead what slow clients cost the others (issue 22's acceptance: valid
requests answered within 1 s while 300 connections trickle their headers): N connections each
send a request line, then a header line every half second, never finishing, while one client
POSTs a one-row request after another, each on a connection of its own (a new connection is what
a connection limit holds back), for --seconds. Three servers, each in a process of its own: no
slow clients, N slow clients (the CLI's defaults), and N slow clients under waitress's own
default of 100 connections. Reports p50, p99 and the slowest answer, and how many requests had
no answer within 5 s.

    python bench/serve.py --slow 300 [--seconds 5] [--json PATH]

With --cold N it measures a server's first answers instead (issue 26, point 4): N times, `specc serve
MODEL --port 0` is started as a user starts it (the CLI, its defaults), and once it prints its address,
one client POSTs a one-row request, then 20 more on the same connection. Reported: seconds from the
start to the address, the first answer's latency and the median of the next 20; beside them, a plain
onnxruntime session in this process: its first run of the same row after the session is made, and
the median of the next 20.

    python bench/serve.py --cold 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SERVER = """
import sys
from pathlib import Path
from specc.inference.session import Session
from specc.inference.serve import App, Server
model = Path(sys.argv[1])
connections = int(sys.argv[2]) if len(sys.argv) > 2 else None
app = App(Session(model, device="cpu", threads=1), model.name)
server = Server(app, "127.0.0.1", 0, 16, connections)
print(server.url, flush=True)
try:
    server.run()
finally:
    app.close()
"""


def percentile(times: list[float], q: float) -> float:
    """The q-th percentile of `times` (NaN for none)."""
    return float(np.percentile(np.asarray(times), q)) if times else float("nan")


def load(clients: int, seconds: float, call) -> dict:
    """`clients` threads each calling call(k) for `seconds`: requests done and every latency."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start_gate = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(k):
        start_gate.wait()
        mine = latencies[k]
        while not stop.is_set():
            t = time.perf_counter()
            call(k)
            mine.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - began
    every = [x for mine in latencies for x in mine]
    return {"requests": len(every), "seconds": elapsed, "p50_ms": 1e3 * percentile(every, 50),
            "p99_ms": 1e3 * percentile(every, 99)}


def served_side(url: str, body: bytes, clients: int, seconds: float) -> dict:
    """`clients` keep-alive connections POSTing `body` to /predict for `seconds`."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    connections = [http.client.HTTPConnection(host, int(port), timeout=60) for _ in range(clients)]
    headers = {"Content-Type": "application/json"}

    def call(k):
        connections[k].request("POST", "/predict", body, headers)
        answer = connections[k].getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(data.decode())

    try:
        return load(clients, seconds, call)
    finally:
        for c in connections:
            c.close()


def health(url: str) -> dict:
    """GET /health: the server's request and run counts."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def start_server(model: Path, connections: int | None = None) -> tuple[subprocess.Popen, str]:
    """SERVER in a process of its own; (the process, its URL)."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(model), *([str(connections)] if connections else [])],
                              stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    return server, server.stdout.readline().strip()


def slowloris(url: str, count: int):
    """`count` connections that send a request line, then a header line every half second, never
    finishing; returns what stops them."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    sockets = []
    for _ in range(count):  # the connections past a limit wait in the backlog: connect() still succeeds
        sock = socket.create_connection((host, int(port)), timeout=60)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sockets.append(sock)
    stop = threading.Event()

    def trickle():
        n = 0
        while not stop.wait(0.5):
            for sock in sockets:
                sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
            n += 1

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()

    def end():
        stop.set()
        thread.join(60)
        for sock in sockets:
            sock.close()
    return end


def fresh_clients(url: str, body: bytes, seconds: float, timeout: float = 5.0) -> dict:
    """One request after another for `seconds`, each on a new connection: latencies, and how many
    had no answer within `timeout`."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    times, unanswered = [], 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            if answer.status != 200:
                raise RuntimeError(answer.read().decode())
            answer.read()
            times.append(time.perf_counter() - t)
        except TimeoutError:
            unanswered += 1
        finally:
            connection.close()
    return {"requests": len(times), "unanswered": unanswered, "p50_ms": 1e3 * percentile(times, 50),
            "p99_ms": 1e3 * percentile(times, 99), "max_ms": 1e3 * max(times, default=float("nan"))}


def slow_clients(model: Path, slow: int, seconds: float) -> list[dict]:
    """Latency of fresh clients beside `slow` slow ones, under the CLI's defaults and waitress's limit."""
    body = json.dumps({"user": [196], "item": [242]}).encode()
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print("| slow connections | connection limit | requests | p50 ms | p99 ms | slowest ms | no answer in 5 s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    table = []
    for count, limit in ((0, None), (slow, None), (slow, 100)):
        server, url = start_server(model, limit)
        try:
            fresh_clients(url, body, 0.2)  # warm up
            end = slowloris(url, count)
            try:
                row = {"slow": count, "limit": limit or "default (1000)", **fresh_clients(url, body, seconds)}
            finally:
                end()
        finally:
            server.terminate()
            server.wait(60)
        table.append(row)
        print(f"| {count} | {row['limit']} | {row['requests']:,} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['max_ms']:.2f} | {row['unanswered']} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return table


def post(connection: http.client.HTTPConnection, body: bytes) -> float:
    """One POST /predict on `connection`: its latency in seconds (an error answer raises)."""
    start = time.perf_counter()
    connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
    answer = connection.getresponse()
    data = answer.read()
    if answer.status != 200:
        raise RuntimeError(data.decode())
    return time.perf_counter() - start


def cold_starts(model: Path, rounds: int) -> list[dict]:
    """`specc serve` started `rounds` times: to its address, its first one-row answer, the next 20."""
    import onnxruntime as ort

    body = json.dumps({"user": [196], "item": [242]}).encode()
    feed = {"user": np.array([196]), "item": np.array([242])}
    rows = []
    for _ in range(rounds):
        start = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "specc", "serve", str(model), "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        try:
            line = server.stdout.readline()
            listening = time.perf_counter() - start
            host, port = re.search(r"http://([\d.]+):(\d+)", line).groups()
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            first = post(connection, body)
            warm = sorted(post(connection, body) for _ in range(20))[10]
            connection.close()
        finally:
            server.terminate()
            server.wait(30)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        session.run(None, feed)
        plain_first = time.perf_counter() - t
        plain_warm = []
        for _ in range(20):
            t = time.perf_counter()
            session.run(None, feed)
            plain_warm.append(time.perf_counter() - t)
        rows.append({"listening_s": listening, "first_ms": 1e3 * first, "next_ms": 1e3 * warm,
                     "plain_first_ms": 1e3 * plain_first, "plain_next_ms": 1e3 * sorted(plain_warm)[10]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time at each level and side (default 5)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 256], help="rows a request (default 1 256)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients (default 1 8 64)")
    ap.add_argument("--slow", type=int, metavar="N", help="measure fresh clients beside N slow ones instead")
    ap.add_argument("--cold", type=int, metavar="N", help="measure N fresh servers' first answers instead")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    from specc.inference.session import Session
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    sets = ["train.fit.epochs=1"]
    spec, _ = load_spec("specs/collab.spec", sets)
    run = Path(tempfile.mkdtemp(prefix="specc-serve-"))
    train_run(spec, run, RunOptions("cpu", sets, quiet=True))
    model = run / "model.onnx"
    if args.cold is not None:
        table = cold_starts(model, args.cold)
        print("| round | start to address s | first answer ms | next 20, median ms | plain session: first run ms | "
              "next 20, median ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        for k, row in enumerate(table, 1):
            print(f"| {k} | {row['listening_s']:.3f} | {row['first_ms']:.2f} | {row['next_ms']:.2f} | "
                  f"{row['plain_first_ms']:.3f} | {row['plain_next_ms']:.3f} |")
        if args.json:
            args.json.write_text(json.dumps(table, indent=1))
        return 0
    if args.slow is not None:
        table = slow_clients(model, args.slow, args.seconds)
        if args.json:
            args.json.write_text(json.dumps(table, indent=1))
        return 0
    session = Session(model, device="cpu", threads=1)
    server, url = start_server(model)
    rng = np.random.default_rng(0)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; onnxruntime pinned to 1 thread")
    print("| rows/request | clients | side | requests | rows/s | requests/s | p50 ms | p99 ms | requests/run |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    table = []
    try:
        flip = False
        for rows in args.sizes:
            users = rng.integers(1, 944, rows)  # the shipped ratings: users 1-943, items 1-1682
            items = rng.integers(1, 1683, rows)
            feed = {"user": users, "item": items}
            body = json.dumps({"user": users.tolist(), "item": items.tolist()}).encode()
            session.run(feed)
            served_side(url, body, 1, 0.2)  # warm up
            for clients in args.clients:
                sides = ["served", "in-process"][::-1 if flip else 1]
                flip = not flip
                for side in sides:
                    before = health(url)
                    if side == "served":
                        result = served_side(url, body, clients, args.seconds)
                        after = health(url)
                        per_run = (after["requests"] - before["requests"]) / max(1, after["runs"] - before["runs"])
                    else:
                        result = load(clients, args.seconds, lambda k: session.run(feed))
                        per_run = 1.0
                    row = {"rows": rows, "clients": clients, "side": side, **result,
                           "rows_per_s": rows * result["requests"] / result["seconds"],
                           "requests_per_s": result["requests"] / result["seconds"], "requests_per_run": per_run}
                    table.append(row)
                    print(f"| {rows} | {clients} | {side} | {row['requests']:,} | {row['rows_per_s']:,.0f} | "
                          f"{row['requests_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                          f"{per_run:.1f} |", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
