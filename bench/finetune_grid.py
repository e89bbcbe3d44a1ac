"""Fine tuning against training from scratch, over variants of the body and of the stages.

bench/finetune.py measures the shipped specs; this varies them. For each seed it pretrains
specs/finetune_pretrain.spec (digits 0-4 of the whole MNIST training set), then for each stage
variant trains specs/finetune.spec three ways on digits 5-9: fine-tuned (the pretrained body,
the head stage, then everything at slice rates), from scratch with the same stages, and from
scratch with every group trained for the same number of epochs. Prints one line per run.

    python bench/finetune_grid.py                                   # the shipped specs, 4+4 epochs
    python bench/finetune_grid.py --body "linear(512) |> relu |> linear(256) |> relu"
    python bench/finetune_grid.py --body "linear(512) |> relu |> dropout(0.5)" \\
        --pretrain-set "train.fit.epochs=8" --pretrain-set "train.optimizer=adam(wd=0.1)"
    python bench/finetune_grid.py --variants "4,1e-2,4,1e-3,1e-2" "8,1e-2,8,1e-3,1e-2" --rows 100

A variant is head epochs, head lr, all-stage epochs, then the all stage's slice(low, high).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = "h = x |> linear(256) |> relu"  # the line both shipped specs have


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--body", help="the body's layers after `x |>` (both specs)")
    ap.add_argument("--pretrain-set", action="append", default=[], help="--set for the pretraining spec")
    ap.add_argument("--rows", type=int, default=1000, help="labelled training images of digits 5-9")
    ap.add_argument("--variants", nargs="+", default=["4,1e-2,4,1e-3,1e-2"])
    args = ap.parse_args(argv)
    if not args.mnist.is_file():
        print(f"no MNIST at {args.mnist}", file=sys.stderr)
        return 2
    from finetune import from_scratch_whole, with_body_from
    from specc.language.spec import FitOneCycle, LRSlice
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    work = Path(tempfile.mkdtemp(prefix="specc-finetune-grid-"))
    specs = {}
    for name in ("finetune_pretrain", "finetune"):
        text = (ROOT / "specs" / f"{name}.spec").read_text()
        assert BODY in text, name
        if args.body:
            text = text.replace(BODY, f"h = x |> {args.body}")
        specs[name] = work / f"{name}.spec"
        specs[name].write_text(text)
    data = f'data.source.path="{args.mnist.resolve()}"'
    for seed in args.seeds:
        sets = [data, f"train.seed={seed}"]
        pre, _ = load_spec(specs["finetune_pretrain"], sets + args.pretrain_set)
        train_run(pre, work / f"pre{seed}", RunOptions("cpu", sets + args.pretrain_set, quiet=True))
        fine_sets = sets + [f"data.train_rows={args.rows}"]
        base, _ = load_spec(specs["finetune"], fine_sets)
        base = with_body_from(base, work / f"pre{seed}")
        for variant in args.variants:
            head_epochs, head_lr, all_epochs, low, high = (float(v) for v in variant.split(","))
            head, every = base.train.stages
            stages = (dataclasses.replace(head, fit=FitOneCycle(int(head_epochs), head_lr)),
                      dataclasses.replace(every, fit=FitOneCycle(int(all_epochs), LRSlice(low, high))))
            tuned = dataclasses.replace(base, train=dataclasses.replace(base.train, stages=stages))

            def accuracy(spec, records_of_stage=None):
                options = RunOptions("cpu", fine_sets, quiet=True, force=True)
                records = train_run(spec, work / "run", options).history.records
                if records_of_stage:
                    records = [r for r in records if r.stage == records_of_stage]
                return records[-1].metrics["accuracy"]

            whole = from_scratch_whole(tuned, int(head_epochs + all_epochs), head_lr)
            head_only = dataclasses.replace(tuned, train=dataclasses.replace(tuned.train, stages=stages[:1]))
            print(f"seed {seed} variant {variant}: fine-tuned {accuracy(tuned):.4f}, after the head stage "
                  f"{accuracy(head_only):.4f}, scratch same stages {accuracy(dataclasses.replace(tuned, inits=())):.4f},"
                  f" scratch all groups {accuracy(whole):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
