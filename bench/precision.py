"""`precision = bf16` against fp32: seconds an epoch and the validation metric of the same spec
trained both ways, for specs/collab.spec, specs/mnist_mlp.spec and specs/mnist_cnn.spec (the whole
MNIST from ../shared/data where it is there, else the sample that ships). On a GPU each side takes
specc's default loop there (the CUDA-graph step for Adam), so bf16 is measured inside the captured
step; a side that fails says why in its row and the others go on.

    python bench/precision.py --device cuda          # the H200 (bench/gpu.sh runs it)
    python bench/precision.py --device cpu --quick   # a smoke run here
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import swapped_rounds  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"
SPECS = {"collab": "collab.spec", "mnist_mlp": "mnist_mlp.spec", "mnist_cnn": "mnist_cnn.spec"}


def side(name: str, precision: str, device: str, epochs: int, out: Path) -> dict:
    """One training run: the median seconds of its epochs after the first, and its last metrics."""
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    sets = [f"train.precision={precision}", f"train.fit.epochs={epochs}"]
    if name != "collab" and MNIST.is_file():
        sets.append(f'data.source.path="{MNIST}"')
    spec, _ = load_spec(ROOT / "specs" / SPECS[name], sets)
    try:
        result = train_run(spec, out, RunOptions(device, sets, quiet=True, force=True))
    except Exception as err:  # a side that cannot run (a capture that fails) is a row that says so
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:120]}
    records = result.history.records
    seconds = [r.seconds for r in records[1:]] or [records[0].seconds]
    metric = spec.train.metrics[0] if spec.train.metrics else None
    return {"seconds": statistics.median(seconds), "valid_loss": records[-1].valid_loss,
            "metric": metric, "value": records[-1].metrics.get(metric) if metric else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="2 epochs, one round")
    ap.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.device == "cpu":
        import torch

        torch.set_num_threads(1)
    rounds, epochs = (1, 2) if args.quick else (2, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.specs:
            results = swapped_rounds(rounds, ("fp32", "bf16"), lambda precision: side(
                name, precision, args.device, epochs, Path(tmp) / f"{name}-{precision}"))
            row = {"spec": name}
            for precision, runs in results.items():
                errors = [x for x in runs if "error" in x]
                row[precision] = errors[0] if errors else {
                    **runs[-1], "seconds": statistics.median(x["seconds"] for x in runs)}
            rows.append(row)
    print(f"device {args.device}; s/epoch: the median epoch after the first (validation included)")
    print("| spec | fp32 s/epoch | bf16 s/epoch | bf16 / fp32 | fp32 valid loss | bf16 valid loss | metric fp32 | bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        a, b = row["fp32"], row["bf16"]
        if "error" in a or "error" in b:
            print(f"| {row['spec']} | {a.get('error') or a['seconds']} | {b.get('error') or b['seconds']} | | | | | |")
            continue
        metrics = (f"{a['metric']} {a['value']:.4f} | {b['value']:.4f}") if a["metric"] else "- | -"
        print(f"| {row['spec']} | {a['seconds']:.3f} | {b['seconds']:.3f} | **{b['seconds'] / a['seconds']:.2f}** | "
              f"{a['valid_loss']:.6f} | {b['valid_loss']:.6f} | {metrics} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
