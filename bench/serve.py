"""Serving throughput: `specc serve` over loopback against the same onnxruntime session called in-process.

Trains specs/collab.spec for one epoch into a temporary folder, then, for each request size (rows a
request) and each number of concurrent clients (1, 8, 64), for a fixed time each (default 5 s):
  - served: the model behind specc.serve's App on waitress, in a process of its own (the CLI's
    defaults: 16 threads, batches of up to 4,096 rows, 2 ms wait), each client a thread of this
    process with its own keep-alive http.client connection, POSTing the same JSON body of random
    (user, item) ids in a loop;
  - in-process: as many threads calling Session.run on the same rows as numpy arrays.
Both sessions are pinned to one onnxruntime thread (the machine is small and shared); the order of
the two sides alternates from one level to the next. Reports rows/s, requests/s and the p50 and p99
latency of a request, and for the server how many requests each session run held on average.

    python bench/serve.py [--seconds 5] [--sizes 1 256] [--clients 1 8 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
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
from specc.infer import Session
from specc.serve import App, Server
model = Path(sys.argv[1])
app = App(Session(model, device="cpu", threads=1), model.name)
server = Server(app, "127.0.0.1", 0, 16)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time at each level and side (default 5)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 256], help="rows a request (default 1 256)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients (default 1 8 64)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    from specc.infer import Session
    from specc.run import load_spec, train_run

    sets = ["train.fit.epochs=1"]
    spec, _ = load_spec("specs/collab.spec", sets)
    run = Path(tempfile.mkdtemp(prefix="specc-serve-"))
    train_run(spec, run, "cpu", sets, quiet=True)
    model = run / "model.onnx"
    session = Session(model, device="cpu", threads=1)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(model)], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = server.stdout.readline().strip()
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
