"""Benchmark: is the first epoch slower than the next ones, and is that specc's (issue 26, point 5)?

Each side trains specs/mnist_cnn.spec's model for 3 epochs in a fresh process, one thread (and two), at
batch 64 and 512: `specc train` (the seconds metrics.csv records for each epoch), and bench/cnn.py's
hand-written loop from the same initial weights (bench/common.hand_epochs' seconds for each epoch, which
cover the same span: the epoch's steps and its validation). Then specs/collab.spec, 5 epochs, one thread:
`specc train` against bench/collab_script.py (the same work by hand, in a fresh process too).
Usage: python bench/first_epoch.py
"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HAND = """
import sys, torch
sys.path.insert(0, sys.argv[3])
torch.set_num_threads(int(sys.argv[1]))
import torch.nn.functional as F
import cnn
from common import hand_epochs
batch = int(sys.argv[2])
spec, prepared, plan = cnn.specc_setup(batch)
state, _ = cnn.specc_start(spec, prepared)
torch.manual_seed(cnn.SEED)
model = cnn.ConvNet(); model.load_state_dict(state); model.train()
x = torch.as_tensor(prepared.train["x"], dtype=torch.float32); y = torch.as_tensor(prepared.train["y"])
xv = torch.as_tensor(prepared.valid["x"], dtype=torch.float32); yv = torch.as_tensor(prepared.valid["y"])
steps = cnn.steps_per_epoch(len(y), batch)
opt, sched = cnn.one_cycle_adamw(model, steps * 3, cnn.LR, cnn.BETAS, cnn.EPS, cnn.WD, cnn.PCT_START, cnn.DIV,
                                 cnn.FINAL_DIV, cnn.MOMS, True)
_, _, seconds = hand_epochs(model, (x,), y, F.cross_entropy, opt, sched, batch, steps, 3, cnn.SEED,
                            torch.device("cpu"), validate=lambda m: cnn.hand_validate(m, xv, yv))
print(" ".join(f"{s:.3f}" for s in seconds))
"""


def specc_epochs(threads: int, batch: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "specc", "train", str(ROOT / "specs" / "mnist_cnn.spec"), "--set",
                        "train.fit.epochs=3", "--set", f"data.batch={batch}", "--threads", str(threads), "--out",
                        str(Path(tmp) / "run"), "--quiet"], check=True, cwd=ROOT)
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            return [float(r["seconds"]) for r in csv.DictReader(f)]


def hand_epochs(threads: int, batch: int) -> list[float]:
    done = subprocess.run([sys.executable, "-c", HAND, str(threads), str(batch), str(ROOT / "bench")], check=True,
                          capture_output=True, text=True, cwd=ROOT)
    return [float(s) for s in done.stdout.split()]


def collab_specc() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "specc", "train", str(ROOT / "specs" / "collab.spec"), "--threads", "1",
                        "--out", str(Path(tmp) / "run"), "--quiet"], check=True, cwd=ROOT)
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            return [float(r["seconds"]) for r in csv.DictReader(f)]


def collab_hand() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, str(ROOT / "bench" / "collab_script.py"),
                               str(ROOT / "specs" / "data" / "ratings.csv"), tmp], check=True, capture_output=True,
                              text=True, cwd=ROOT)
    return [float(line.split()[-1]) for line in done.stdout.splitlines()[1:]]


def main() -> int:
    print("seconds of epochs 0, 1, 2 in a fresh process; first = epoch 0 - the mean of epochs 1 and 2")
    for threads, batch in ((1, 64), (2, 64), (1, 512)):
        for name, run in (("specc", specc_epochs), ("hand loop", hand_epochs)):
            s = run(threads, batch)
            print(f"  {name:<9} threads {threads} batch {batch:>3}: {s[0]:.3f} {s[1]:.3f} {s[2]:.3f}   "
                  f"first {s[0] - (s[1] + s[2]) / 2:+.3f} s")
    print("specs/collab.spec, one thread, batch 64: seconds of epochs 0-4; first = epoch 0 - the median of 1-4")
    for name, run in (("specc", collab_specc), ("hand script", collab_hand)):
        s = run()
        print(f"  {name:<11} {' '.join(f'{x:.3f}' for x in s)}   first {s[0] - statistics.median(s[1:]):+.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
