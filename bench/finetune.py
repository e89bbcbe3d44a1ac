"""Fine tuning against training from scratch (issue: layer groups and discriminative learning rates).

Pretrains specs/finetune_pretrain.spec's body on MNIST digits 0-4 (the whole 50,000-image training
set's 0-4 rows), then trains specs/finetune.spec on digits 5-9 with its first 1,000 training
images, twice: once as the spec says (body from the pretrained run, head stage with the body
frozen, then everything with slice(...)), once from scratch (the same spec without its `init`,
the same stages and epochs). Both are validated on every 5-9 image of MNIST's validation set.

    python bench/finetune.py [--mnist ../shared/data/mnist/mnist.npz] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def with_body_from(spec, run: Path):
    """The spec with every `init ... from` pointing at `run`."""
    return dataclasses.replace(spec, inits=tuple(dataclasses.replace(i, run=run) for i in spec.inits))


def from_scratch_whole(spec, epochs: int, lr: float):
    """The spec from scratch (no init), every group trained in one one-cycle stage of `epochs`."""
    from specc.language.spec import FitOneCycle, Stage

    return dataclasses.replace(spec, inits=(), train=dataclasses.replace(
        spec.train, stages=(Stage("all", FitOneCycle(epochs, lr)),)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pretrain-spec", type=Path, default=ROOT / "specs" / "finetune_pretrain.spec")
    ap.add_argument("--spec", type=Path, default=ROOT / "specs" / "finetune.spec")
    args = ap.parse_args(argv)
    if not args.mnist.is_file():
        print(f"no MNIST at {args.mnist}", file=sys.stderr)
        return 2
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    data = f'data.source.path="{args.mnist.resolve()}"'
    work = Path(tempfile.mkdtemp(prefix="specc-finetune-"))
    rows = []
    for seed in args.seeds:
        sets = [data, f"train.seed={seed}"]
        pre, _ = load_spec(args.pretrain_spec, sets)
        t = time.perf_counter()
        pre_run = train_run(pre, work / f"pretrain{seed}", RunOptions("cpu", sets, quiet=True))
        pre_s = time.perf_counter() - t
        spec, _ = load_spec(args.spec, sets)
        spec = with_body_from(spec, work / f"pretrain{seed}")
        tuned = train_run(spec, work / f"finetune{seed}", RunOptions("cpu", sets, quiet=True))
        scratch = train_run(dataclasses.replace(spec, inits=()), work / f"scratch{seed}",
                            RunOptions("cpu", sets, quiet=True))
        # and from scratch with every group trained from the start, the same number of epochs
        whole = from_scratch_whole(spec, sum(s.fit.epochs for s in spec.train.stages), 1e-2)
        scratch_all = train_run(whole, work / f"scratch_all{seed}", RunOptions("cpu", sets, quiet=True))
        row = {"seed": seed, "pretrain_valid_accuracy": pre_run.history.records[-1].metrics["accuracy"],
               "pretrain_seconds": round(pre_s, 1),
               "finetuned": tuned.history.records[-1].metrics["accuracy"],
               "finetuned_after_head_stage": [r.metrics["accuracy"] for r in tuned.history.records
                                              if r.stage == "head"][-1],
               "scratch": scratch.history.records[-1].metrics["accuracy"],
               "scratch_all_groups": scratch_all.history.records[-1].metrics["accuracy"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    fine = [r["finetuned"] for r in rows]
    scratch = [r["scratch"] for r in rows]
    print(f"\nvalid accuracy on digits 5-9 after training on 1,000 images ({len(rows)} seeds):")
    print(f"  fine-tuned (body pretrained on 0-4): {statistics.mean(fine):.4f}  ({', '.join(f'{v:.4f}' for v in fine)})")
    print(f"  from scratch, same stages:           {statistics.mean(scratch):.4f}  "
          f"({', '.join(f'{v:.4f}' for v in scratch)})")
    every = [r["scratch_all_groups"] for r in rows]
    print(f"  from scratch, everything trained:    {statistics.mean(every):.4f}  "
          f"({', '.join(f'{v:.4f}' for v in every)})  (one cycle, lr 1e-2, the same epochs)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
