"""What TensorBoard logging costs a run: the time specc.training.tracking.TensorBoard takes to write an
epoch (its steps, up to POINTS of them, and the validation numbers) against the time the epoch
itself takes, for specs/collab.spec (1,406 steps an epoch) and for a long epoch of 351,562 steps
(the 25M set at batch 64; the steps' numbers are made up, the writing is the same).

    python bench/tracking.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specc.data.prepare import prepare  # noqa: E402
from specc.model.plan import make_plan  # noqa: E402
from specc.training.loop import train  # noqa: E402
from specc.training.metrics import EpochRecord, History  # noqa: E402
from specc.training.options import RunOptions  # noqa: E402
from specc.training.run import load_spec  # noqa: E402
from specc.training.tracking import TensorBoard  # noqa: E402


def write_seconds(history: History, steps: int, reps: int = 5) -> float:
    """The median time of writing one epoch of `history` into a fresh event file."""
    times = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            board = TensorBoard(Path(tmp), "spec", "plan", {"n_factors": 40})
            start = time.perf_counter()
            board.epoch(history.records[-1], history, steps)
            times.append(time.perf_counter() - start)
            board.close()
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    spec, _ = load_spec(ROOT / "specs" / "collab.spec", ["train.fit.epochs=1"])
    prepared = prepare(spec.data, spec.model.inputs)
    plan = make_plan(spec, prepared)
    start = time.perf_counter()
    _, history = train(spec, prepared, plan, RunOptions("cpu"))
    epoch = time.perf_counter() - start
    short = write_seconds(history, plan.steps_per_epoch)
    long_steps = 351_562
    rng = np.random.default_rng(0)
    long = History([EpochRecord("train", 0, 0.8, 0.8, {"rmse": 0.9}, 1e-3, 60.0)],
                   rng.random(long_steps).tolist(), rng.random(long_steps).tolist(), [1e-3] * long_steps)
    long_write = write_seconds(long, long_steps)
    print("| epoch | steps | epoch s | writing it s | share |")
    print("|---|---:|---:|---:|---:|")
    print(f"| collab (this CPU) | {plan.steps_per_epoch:,} | {epoch:.3f} | {short:.4f} | {short / epoch:.2%} |")
    print(f"| 25M at batch 64 (H200: 59.9 s an epoch) | {long_steps:,} | 59.9 | {long_write:.4f} | "
          f"{long_write / 59.9:.3%} |")


if __name__ == "__main__":
    main()
