"""Benchmark: `specc predict` as a whole command against a plain onnxruntime script (issue 26, point 4).

specs/collab.spec is trained for one epoch; 100,000 rows of (user, item) from its ratings are written to a
CSV. Each side then runs as a fresh process, alternating, `--rounds` times, and the medians are reported:
  specc predict   `specc predict model.onnx rows.csv --out predictions.csv`
  plain script    python: pyarrow reads the CSV, onnxruntime runs the model on the two int64 columns, pyarrow
                  writes the rows and the predictions: what a person would write by hand
  plain, no pandas  the plain script with pandas kept out (an import finder that says it is not
                  installed), which pyarrow otherwise imports at its first array conversion when it is
                  installed (specc does not convert that way)
  python alone    `python -c pass`: the interpreter's own start-up, in both
Both write the same numbers (checked). Usage: python bench/predict.py [--rounds 5] [--rows 100000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

PLAIN = """
import sys
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
model, rows, out = sys.argv[1:4]
table = pacsv.read_csv(rows)
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feed = {name: table[name].to_numpy().astype(np.int64) for name in ("user", "item")}
rating = session.run(["rating"], feed)[0]
pacsv.write_csv(table.append_column("rating", pa.array(rating)), out)
"""

NO_PANDAS = """
import sys
class NoPandas:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoPandas())
"""


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = folder / "run"
        subprocess.run([sys.executable, "-m", "specc", "train", str(ROOT / "specs" / "collab.spec"), "--set",
                        "train.fit.epochs=1", "--out", str(run), "--quiet"], check=True)
        lines = (ROOT / "specs" / "data" / "ratings.csv").read_text().splitlines()[1:args.rows + 1]
        (folder / "rows.csv").write_text("user,item\n" + "".join(",".join(line.split(",")[:2]) + "\n" for line in lines))
        model, rows = str(run / "model.onnx"), str(folder / "rows.csv")
        sides = {
            "specc predict": [sys.executable, "-m", "specc", "predict", model, rows, "--out", str(folder / "a.csv"),
                              "--device", "cpu"],
            "plain script": [sys.executable, "-c", PLAIN, model, rows, str(folder / "b.csv")],
            "plain, no pandas": [sys.executable, "-c", NO_PANDAS + PLAIN, model, rows, str(folder / "c.csv")],
            "python alone": [sys.executable, "-c", "pass"],
        }
        times = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, command in sides.items():
                times[name].append(timed(command))
        a = np.loadtxt(folder / "a.csv", delimiter=",", skiprows=1, usecols=2)
        b = np.loadtxt(folder / "b.csv", delimiter=",", skiprows=1, usecols=2)
        c = np.loadtxt(folder / "c.csv", delimiter=",", skiprows=1, usecols=2)
        assert np.allclose(a, b, rtol=0, atol=1e-6) and np.array_equal(b, c), "the sides' predictions differ"
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{args.rows:,} rows, {args.rounds} rounds alternated, medians of whole processes")
    for name in sides:
        print(f"  {name:<16} {med[name]:6.3f} s  ({med[name] / med['plain script']:.2f} x the plain script)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
