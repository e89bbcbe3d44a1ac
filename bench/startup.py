"""Benchmark: what a user waits for besides the epochs (issue 26, point 2), side by side, one thread.

Each side is a fresh process; the sides alternate, `--rounds` times (each round in the other order), and
the medians are reported:
  python              `python -c pass`: the interpreter alone
  import torch        `python -c "import torch"`
  torch + AdamW       import torch and build an AdamW: torch.optim imports torch._dynamo on construction
                      and at every step, so every torch loop pays this before its first step
  hand script         bench/collab_script.py: specs/collab.spec's work written by hand (no ONNX, no plot)
  hand script + ONNX  the same, then torch.onnx.export of the model (bench/collab_script.py --onnx)
  specc train         `specc train specs/collab.spec --threads 1 --out <new folder>`
  refusal: run exists `specc train` into the folder of a finished run (exit 2)
  refusal: no data    `specc train` of the spec with its source pointing at a missing file (exit 1)

"first step" is when the first training step starts, counted from the moment the process is started:
the time its first epoch line is read, less that epoch's own seconds (the loop and validation, as
metrics.csv and the hand script print them). Whether a refusal imported torch is checked once, by
`python -X importtime`. Usage: python bench/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "collab.spec"
RATINGS = ROOT / "specs" / "data" / "ratings.csv"
PY = sys.executable


def launch(argv: list[str]) -> tuple[float, float | None, list[str], int]:
    """Run argv: (seconds to exit, seconds to the first epoch line or None, stdout lines, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first_line, lines = None, []
    for line in proc.stdout:
        if first_line is None and line[:1].isdigit():  # an epoch line: both sides start it with the epoch
            first_line = time.perf_counter() - start
        lines.append(line)
    proc.stderr.read()
    code = proc.wait()
    return time.perf_counter() - start, first_line, lines, code


def specc_run(folder: Path) -> dict:
    out = folder / f"run{time.perf_counter_ns()}"
    whole, first_line, _, code = launch([PY, "-m", "specc", "train", str(SPEC), "--threads", "1", "--out", str(out)])
    assert code == 0, code
    with open(out / "metrics.csv", newline="") as f:
        epoch0 = float(next(csv.DictReader(f))["seconds"])
    return {"whole": whole, "first step": first_line - epoch0}


def hand_run(folder: Path, *extra: str) -> dict:
    out = folder / f"hand{time.perf_counter_ns()}"
    whole, first_line, lines, code = launch([PY, str(ROOT / "bench" / "collab_script.py"), str(RATINGS), str(out),
                                             *extra])
    assert code == 0, code
    epoch0 = float(next(line for line in lines if line[:1].isdigit()).split()[-1])
    return {"whole": whole, "first step": first_line - epoch0}


def exits(argv: list[str], expect: int) -> dict:
    whole, _, _, code = launch(argv)
    assert code == expect, (argv, code)
    return {"whole": whole}


def imports_torch(argv: list[str]) -> bool:
    """Whether the command imports torch (python -X importtime's list of what it imported)."""
    got = subprocess.run([PY, "-X", "importtime", *argv], capture_output=True, text=True, cwd=ROOT)
    return any(line.rstrip().endswith("| torch") for line in got.stderr.splitlines())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        finished = folder / "finished"
        subprocess.run([PY, "-m", "specc", "train", str(SPEC), "--set", "train.fit.epochs=1", "--quiet",
                        "--out", str(finished)], check=True, cwd=ROOT)
        exists = ["-m", "specc", "train", str(SPEC), "--out", str(finished)]
        missing = ["-m", "specc", "train", str(SPEC), "--set", 'data.source=csv("no/such/ratings.csv")',
                   "--out", str(folder / "never")]
        sides = {
            "python": lambda: exits([PY, "-c", "pass"], 0),
            "import torch": lambda: exits([PY, "-c", "import torch"], 0),
            "torch + AdamW": lambda: exits([PY, "-c", "import torch; torch.optim.AdamW([torch.nn.Parameter("
                                                      "torch.zeros(1))])"], 0),
            "hand script": lambda: hand_run(folder),
            "hand script + ONNX": lambda: hand_run(folder, "--onnx"),
            "specc train": lambda: specc_run(folder),
            "refusal: run exists": lambda: exits([PY, *exists], 2),
            "refusal: no data": lambda: exits([PY, *missing], 1),
        }
        results, order = {side: [] for side in sides}, list(sides)
        for r in range(args.rounds):
            for side in order:
                results[side].append(sides[side]())
            order.reverse()
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        torch_in = {"refusal: run exists": imports_torch(exists), "refusal: no data": imports_torch(missing)}
    med = {side: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for side, runs in results.items()}
    print(f"medians of {args.rounds} rounds, seconds from process start")
    print(f"| {'side':<46} | {'to first step':>13} | {'to exit':>8} |")
    print(f"| {'-' * 46} | {'-' * 12}: | {'-' * 7}: |")
    for side, m in med.items():
        first = f"{m['first step']:.3f}" if "first step" in m else ""
        note = f" (imports torch: {'yes' if torch_in[side] else 'no'})" if side in torch_in else ""
        print(f"| {side + note:<46} | {first:>13} | {m['whole']:>8.3f} |")
    t, adamw = med["import torch"]["whole"], med["torch + AdamW"]["whole"]
    s, h = med["specc train"], med["hand script"]
    print()
    print(f"specc's first step - import torch:     {s['first step'] - t:+.3f} s (target <= +0.3)")
    print(f"specc's first step - torch + AdamW:    {s['first step'] - adamw:+.3f} s")
    print(f"specc's first step / hand script's:    {s['first step'] / h['first step']:.3f}")
    print(f"whole run, specc train / hand script:  {s['whole'] / h['whole']:.3f} (target <= 1.05)")
    print(f"whole run, specc train / hand + ONNX:  {s['whole'] / med['hand script + ONNX']['whole']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
