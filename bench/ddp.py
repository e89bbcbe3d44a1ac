"""Data-parallel training on this CPU: `specc train` under torchrun with 1 and with 2 processes
(gloo, one thread each), for specs/collab.spec and specs/mnist_mlp.spec at a global batch of 1,024
and 8,192, as rows a second and their ratio; then the bytes each step all-reduces and what that
costs on a 100 Gb/s link, beside the H200's step time.

Two processes on two cores are not a speed-up test: the second process takes the core the first
one's thread would otherwise have to itself, and both copy and sum every gradient each step. What
the ratio shows is the price of the all-reduce against halving each process's share of the batch.

    python bench/ddp.py            # 3 alternated rounds of each (spec, batch, processes), 3 epochs each
    python bench/ddp.py --quick    # 1 round, 2 epochs
    python bench/ddp.py --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"collab": ROOT / "specs" / "collab.spec", "mnist_mlp": ROOT / "specs" / "mnist_mlp.spec"}
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"  # the whole set: the sample's 5,000 rows < 8,192
SETS = {"collab": [], "mnist_mlp": [f'data.source.path="{MNIST}"']}
BATCHES = (1024, 8192)
LINK = 100e9 / 8  # bytes a second on a 100 Gb/s link
H200_STEP = 0.4e-3  # s: the collab spec's captured step on the 25M set at batch 65,536 (bench/README.md)
ML25M = {"users": 162_541, "items": 59_047, "factors": 40}  # MovieLens 25M's shape, as in bench/README.md


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(spec: Path, sets: list[str], batch: int, procs: int, epochs: int, out: Path) -> tuple[list[float], float]:
    """`specc train` under torchrun: the seconds of each epoch after the first (metrics.csv's,
    which include the validation pass rank 0 makes) and the last validation loss."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "specc", "train", str(spec), "--out", str(out),
           "--force", "--quiet", "--threads", "1", "--set", f"data.batch={batch}", "--set",
           f"train.fit.epochs={epochs}", *(a for s in sets for a in ("--set", s))]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench/ddp.py: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["seconds"]) for r in rows[1:]], float(rows[-1]["valid_loss"])


def all_reduced_bytes(spec_path: Path, sets: list[str], batch: int) -> tuple[int, int]:
    """(bytes, training rows): what specc.training.distributed.StepSync sums each step for this spec (every
    trainable parameter's gradient, dense, in float32, plus the loss and the stop flag)."""
    from specc.data.prepare import prepare
    from specc.model.plan import make_plan
    from specc.model.sized import sized_model
    from specc.training.run import load_spec

    spec, _ = load_spec(spec_path, [f"data.batch={batch}", *sets])
    prepared = prepare(spec.data, spec.model.inputs)
    make_plan(spec, prepared)
    return (sum(sized_model(spec, prepared).params().values()) + 2) * 4, prepared.n_train


def ring_seconds(nbytes: float, procs: int) -> float:
    """A ring all-reduce sends and receives 2 (N - 1) / N of the buffer per process."""
    return 2 * (procs - 1) / procs * nbytes / LINK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rounds, epochs = (1, 2) if args.quick else (3, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in SPECS.items():
            if name == "mnist_mlp" and not MNIST.is_file():
                print(f"bench/ddp.py: skipping mnist_mlp: no {MNIST} (the whole MNIST, ../shared/data)")
                continue
            for batch in BATCHES:
                nbytes, n_train = all_reduced_bytes(spec, SETS[name], batch)
                seconds, valid = {1: [], 2: []}, {}
                for _ in range(rounds):  # alternated, so a busy neighbour slows both sides alike
                    for procs in (1, 2):
                        times, valid[procs] = run(spec, SETS[name], batch, procs, epochs,
                                                  Path(tmp) / f"{name}-{batch}-{procs}")
                        seconds[procs] += times
                steps = n_train // batch
                rate = {p: steps * batch / statistics.median(s) for p, s in seconds.items()}
                rows.append({"spec": name, "batch": batch, "steps": steps, "rows_s_1": rate[1], "rows_s_2": rate[2],
                             "ratio": rate[2] / rate[1], "valid_1": valid[1], "valid_2": valid[2],
                             "bytes_step": nbytes, "link_ms_2": 1e3 * ring_seconds(nbytes, 2),
                             "link_ms_8": 1e3 * ring_seconds(nbytes, 8)})
    print("| spec | batch | steps | 1 process rows/s | 2 processes rows/s | 2 / 1 | valid loss 1 | valid loss 2 | "
          "all-reduced per step | 100 Gb/s, 2 ranks | 8 ranks |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['spec']} | {r['batch']:,} | {r['steps']} | {r['rows_s_1']:,.0f} | {r['rows_s_2']:,.0f} | "
              f"**{r['ratio']:.2f}** | {r['valid_1']:.6f} | {r['valid_2']:.6f} | {r['bytes_step'] / 1e6:.2f} MB | "
              f"{r['link_ms_2']:.3f} ms | {r['link_ms_8']:.3f} ms |")
    table = (ML25M["users"] + 1 + ML25M["items"] + 1) * (ML25M["factors"] + 1) * 4
    print(f"\ncollab on the 25M set: {table / 1e6:.1f} MB of dense embedding gradients a step; a ring all-reduce "
          f"over 100 Gb/s takes {1e3 * ring_seconds(table, 2):.2f} ms with 2 ranks and "
          f"{1e3 * ring_seconds(table, 8):.2f} ms with 8, against the H200's {1e3 * H200_STEP:.1f} ms step")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
