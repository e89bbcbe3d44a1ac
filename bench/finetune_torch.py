"""Fine tuning against training from scratch, written in plain torch: does the transfer help at all?

An independent check of what bench/finetune.py measures through specc, with nothing of specc in
it: pretrain a body and a head on MNIST digits 0-4 (the whole training set's 0-4 rows), then on
digits 5-9 from their first `--rows` training images: a new head with the body frozen, then
everything with two learning rates (body, head), against the same network trained from scratch
for the same number of epochs. AdamW (wd 0.01, betas 0.9/0.99) and one-cycle throughout, batch 64,
as the specs have it. Valid accuracy on every 5-9 image of MNIST's validation set.

    python bench/finetune_torch.py                                    # the specs' MLP, 4+4 epochs
    python bench/finetune_torch.py --body 1024 --dropout 0.5 --pretrain-epochs 10 --pretrain-wd 0.1
    python bench/finetune_torch.py --conv                             # a small conv body instead
    python bench/finetune_torch.py --rows 300 --epochs 20 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import hand_epochs

ROOT = Path(__file__).resolve().parent.parent


def fit(model: nn.Module, groups: list[tuple], x, y, epochs: int, seed: int, wd: float = 0.01) -> None:
    """AdamW and one-cycle over (parameters, peak lr) groups, shuffled batches of 64 (the last one partial)."""
    opt = torch.optim.AdamW([{"params": list(p), "lr": lr} for p, lr in groups], betas=(0.9, 0.99),
                            weight_decay=wd)
    steps = (len(x) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr for _, lr in groups], total_steps=epochs * steps)
    model.train()
    hand_epochs(model, (x,), y, F.cross_entropy, opt, sched, 64, steps, epochs, seed, torch.device("cpu"))
    model.eval()


def accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def make_body(args) -> tuple[nn.Module, int]:
    """The body and the width of what it gives the head."""
    if args.conv:  # two 3x3 convolutions with max pooling: 32 maps of 7x7
        return nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten()), 32 * 7 * 7
    layers, width = [], 784
    for size in args.body:
        layers += [nn.Linear(width, size), nn.ReLU()] + ([nn.Dropout(args.dropout)] if args.dropout else [])
        width = size
    return nn.Sequential(*layers), width


def make_head(width: int) -> nn.Module:
    """The specs' head: two matrices with a ReLU between, 5 classes."""
    return nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 5))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rows", type=int, default=1000, help="labelled training images of digits 5-9")
    ap.add_argument("--body", type=int, nargs="+", default=[256], help="hidden widths of an MLP body")
    ap.add_argument("--dropout", type=float, default=0.0, help="after each of the body's ReLUs")
    ap.add_argument("--conv", action="store_true", help="a small conv body instead of the MLP")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--pretrain-wd", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, nargs=2, default=[4, 4], metavar=("HEAD", "ALL"))
    ap.add_argument("--lrs", type=float, nargs=3, default=[1e-2, 1e-3, 1e-2], metavar=("HEAD", "BODY", "ALL"),
                    help="the head stage's lr; then the body's and the head's in the all stage")
    args = ap.parse_args(argv)
    if not args.mnist.is_file():
        print(f"no MNIST at {args.mnist}", file=sys.stderr)
        return 2
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    with np.load(args.mnist) as d:
        x, y = torch.tensor(d["x_train"], dtype=torch.float32) / 255, torch.tensor(d["y_train"]).long()
        xv, yv = torch.tensor(d["x_valid"], dtype=torch.float32) / 255, torch.tensor(d["y_valid"]).long()
    source, source_valid, target = y < 5, yv < 5, y >= 5
    x_target, y_target = x[target][:args.rows], y[target][:args.rows] - 5
    x_check, y_check = xv[yv >= 5], yv[yv >= 5] - 5
    head_epochs, all_epochs = args.epochs
    head_lr, body_lr, all_lr = args.lrs
    print(f"digits 5-9 from {args.rows} images; body {'conv' if args.conv else args.body}; "
          f"epochs {head_epochs} + {all_epochs}")
    gaps = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        body, width = make_body(args)
        pretrained = nn.Sequential(body, make_head(width))
        fit(pretrained, [(pretrained.parameters(), 3e-3)], x[source], y[source], args.pretrain_epochs, seed,
            wd=args.pretrain_wd)
        pre_accuracy = accuracy(pretrained, xv[source_valid], yv[source_valid])

        torch.manual_seed(seed + 100)
        tuned = nn.Sequential(body, make_head(width))
        body.requires_grad_(False)  # the head stage: no gradient, no optimizer state for the body
        fit(tuned, [(tuned[1].parameters(), head_lr)], x_target, y_target, head_epochs, seed)
        after_head = accuracy(tuned, x_check, y_check)
        body.requires_grad_(True)
        fit(tuned, [(tuned[0].parameters(), body_lr), (tuned[1].parameters(), all_lr)], x_target, y_target,
            all_epochs, seed + 1)
        fine = accuracy(tuned, x_check, y_check)

        torch.manual_seed(seed + 200)
        fresh_body, _ = make_body(args)
        scratch = nn.Sequential(fresh_body, make_head(width))
        fit(scratch, [(scratch.parameters(), all_lr)], x_target, y_target, head_epochs + all_epochs, seed)
        from_scratch = accuracy(scratch, x_check, y_check)
        gaps.append(fine - from_scratch)
        print(f"seed {seed}: pretrained on 0-4 {pre_accuracy:.4f}; on 5-9: after the head stage {after_head:.4f}, "
              f"fine-tuned {fine:.4f}, from scratch {from_scratch:.4f}, gap {fine - from_scratch:+.4f}", flush=True)
    print(f"mean gap, fine-tuned minus scratch: {np.mean(gaps):+.4f} over {len(gaps)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
