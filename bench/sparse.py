"""`sparse_adam` against `adam` on the collab spec: seconds an epoch and the validation MSE, each
optimizer in specc's default loop on the device (on a GPU, adam takes the CUDA-graph step and
sparse_adam the plain loop, which is what a user of either gets), alternated.

    python bench/sparse.py                                   # the shipped 100k ratings, batch 64, this CPU
    python bench/sparse.py --device cuda --data /tmp/r25m.csv --batch 64 65536   # the H200, the 25M set
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

OPTIMIZERS = {"adam": "adam(betas=(0.9, 0.99), wd=0.1)", "sparse_adam": "sparse_adam(betas=(0.9, 0.99), wd=0.1)"}


def side(optimizer: str, batch: int, data: Path | None, device: str, epochs: int, out: Path) -> dict:
    """One run of specs/collab.spec with this optimizer: the median epoch after the first, the last valid MSE."""
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    sets = [f"train.optimizer={OPTIMIZERS[optimizer]}", f"data.batch={batch}", f"train.fit.epochs={epochs}"]
    if data is not None:
        sets.append(f'data.source.path="{data.resolve()}"')
    spec, _ = load_spec(ROOT / "specs" / "collab.spec", sets)
    options = RunOptions(device, sets, quiet=True, force=True, threads=1 if device == "cpu" else None)
    result = train_run(spec, out, options)
    records = result.history.records
    loop = json.loads((out / "run.json").read_text())["loop"]
    return {"seconds": statistics.median(r.seconds for r in records[1:] or records), "valid_mse": records[-1].valid_loss,
            "loop": loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--data", type=Path, help="a ratings CSV (user,item,rating) in place of the shipped one")
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch:
            runs = swapped_rounds(args.rounds, list(OPTIMIZERS), lambda name: side(
                name, batch, args.data, args.device, args.epochs, Path(tmp) / name))
            row = {"batch": batch}
            for name, results in runs.items():
                row[name] = {**results[-1], "seconds": statistics.median(x["seconds"] for x in results)}
            rows.append(row)
    print(f"device {args.device}, data {args.data or 'specs/data/ratings.csv'}; s/epoch: median epoch after the first")
    print("| batch | adam loop | adam s/epoch | sparse_adam loop | sparse_adam s/epoch | sparse / adam | "
          "adam valid MSE | sparse_adam valid MSE |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        a, s = row["adam"], row["sparse_adam"]
        print(f"| {row['batch']:,} | {a['loop']} | {a['seconds']:.3f} | {s['loop']} | {s['seconds']:.3f} | "
              f"**{s['seconds'] / a['seconds']:.2f}** | {a['valid_mse']:.6f} | {s['valid_mse']:.6f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
