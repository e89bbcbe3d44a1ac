"""Benchmark: what specc's plain step does beyond a hand-written step, each part timed alone (issue 26,
point 1), against the whole step, on specs/collab.spec at batch 64, one thread.

Parts, each timed with timeit over real objects (the spec's fx model and batches, torch's fused AdamW
over the model's parameters), `--repeat` times, the median taken, in microseconds a step:
  whole step        the everyday step: rows by index, forward, loss, zero_grad, backward, step, schedule
  forward + loss    specc's loss(xs, y) (specc.training.metrics.batch_loss over the fx GraphModule: the
                    forward, the prediction's column, the loss function) against the hand-written
                    EmbeddingDotBias's forward and F.mse_loss on the same rows
  rate kept         lrs.append(optimizer.param_groups[-1]["lr"]): the rate of every step, for loss.png
                    and the checkpoint
  NaN look          torch.stack of the last CHECK_EVERY losses and NanWatch.look, once every
                    CHECK_EVERY steps: its cost divided by CHECK_EVERY
  this rank's rows  Batches.mine on the batch's indices (one process: returns them)
Usage: python bench/bookkeeping.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import collab  # noqa: E402  (the bench's spec set-up and the hand-written model)

from specc.training.loop import build_model, training_batches  # noqa: E402
from specc.training.metrics import batch_loss  # noqa: E402
from specc.training.steps import CHECK_EVERY, NanWatch  # noqa: E402


def per_step(stmt, number: int, repeat: int) -> float:
    """Median microseconds of one call of stmt()."""
    return 1e6 * statistics.median(t / number for t in timeit.repeat(stmt, number=number, repeat=repeat))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec, prepared, plan = collab.specc_setup(64)
    model = build_model(spec, prepared)
    hand = collab.EmbeddingDotBias(prepared.vocabs["user"].size, prepared.vocabs["item"].size, collab.N_FACTORS,
                                   collab.Y_RANGE)
    hand.load_state_dict(model.state_dict())
    batches = training_batches(spec, prepared, plan, torch.device("cpu"), (0, 1))
    perm = torch.randperm(batches.rows, generator=torch.Generator().manual_seed(0))
    idx = perm[:64]
    xs, y = [x[idx] for x in batches.xs], batches.y[idx]
    loss = batch_loss(spec, model, [])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10 ** 7)
    state = {"s": 0}

    def whole():
        s = state["s"] = (state["s"] + 1) % (batches.rows // 64)
        i = perm[s * 64:(s + 1) * 64]
        value = loss([x[i] for x in batches.xs], batches.y[i])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()

    lrs, losses = [], [loss(xs, y).detach() for _ in range(CHECK_EVERY)]
    watch = NanWatch(True, quiet=True)
    parts = {  # the forward passes with autograd on, as in training (their graphs freed unused)
        "whole step": per_step(whole, 500, args.repeat),
        "forward + loss, specc": per_step(lambda: loss(xs, y), 2000, args.repeat),
        "forward + loss, hand": per_step(lambda: F.mse_loss(hand(*xs), y), 2000, args.repeat),
        "rate kept": per_step(lambda: lrs.append(opt.param_groups[-1]["lr"]), 100_000, args.repeat),
        "NaN look": per_step(lambda: watch.look(torch.stack(losses[-CHECK_EVERY:]), 0, lrs, "train", 0), 2000,
                             args.repeat) / CHECK_EVERY,
        "this rank's rows": per_step(lambda: batches.mine(idx), 100_000, args.repeat),
    }
    step = parts["whole step"]
    print(f"specs/collab.spec, batch 64, one thread; microseconds a step, medians of {args.repeat} repeats")
    for name, us in parts.items():
        print(f"  {name:<22} {us:9.3f} us  ({100 * us / step:5.2f}% of a step)")
    extra = (parts["forward + loss, specc"] - parts["forward + loss, hand"] + parts["rate kept"] + parts["NaN look"]
             + parts["this rank's rows"])
    print(f"  specc's extra, all told {extra:9.3f} us  ({100 * extra / step:5.2f}% of a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
