"""Benchmark: one MNIST training epoch of specc's convnet against a hand-written PyTorch loop (CPU).

Both sides train specs/mnist_cnn.spec's model (two blocks of 3x3 convolution, batchnorm, ReLU and
2x2 max pooling, then linear(128), ReLU, dropout 0.25 and linear(10); cross entropy, AdamW with
wd=0.01, fit_one_cycle) for one epoch on the spec's own data, the 5,000 / 1,000-row MNIST sample in
specs/data/, from the same initial weights, on the same batches (the same seeded permutation) and
with the same dropout masks, with the same optimizer and schedule, and then run the same validation
pass (loss and accuracy). The hand-written loop is timed twice: with AdamW's everyday default
implementation and with fused=True, as specc asks for. The three are timed alternately
(ABCABC...) after a warm-up; the medians are compared. Usage (from any directory):

    python bench/cnn.py                 # batch 64 and 512, the full run (about 3 minutes on 2 cores)
    python bench/cnn.py --quick         # smoke run: one timed epoch of each
    python bench/cnn.py --json out.json # also save the numbers
    python bench/cnn.py --profile 40    # no timing: cProfile the three loops on 40 steps of batch 64

See bench/README.md for the method and the last measured table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import (add_args, clone_state, hand_epochs, one_cycle_adamw, predict, print_env, print_init_and_target,
                    print_table, profile_runs, run_batches, set_threads, steps_per_epoch, three_loops, timed,
                    write_json)
from specc.data.prepare import prepare
from specc.language.spec import FitOneCycle
from specc.model.plan import make_plan
from specc.training.loop import build_model, train
from specc.training.options import RunOptions
from specc.training.run import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/mnist_cnn.spec"
DEVICE = torch.device("cpu")

# The hand-written loop's settings, written out as a person would; `check_settings` makes sure they
# are the ones specc reads from the spec, so that the two loops do the same work.
SEED = 0
LR = 1e-2
BETAS = (0.9, 0.999)
WD = 0.01
EPS = 1e-8
PCT_START, DIV, FINAL_DIV, MOMS = 0.3, 25.0, 1e4, (0.95, 0.85)
N_TRAIN, N_VALID, N_CLASSES = 5_000, 1_000, 10
WIDTHS, HIDDEN, DROPOUT = (8, 32), 128, 0.25
SCALE = 1 / 255  # pixels 0-255 to 0-1, inside the model (specc multiplies by 1/255 too)
VALID_BATCH = 8192  # specc evaluates in chunks of this size; the hand-written pass does the same

# How close the two sides' validation numbers must be to count as "the same training". specc and
# the fused loop are bit-equal; the everyday single-tensor AdamW rounds differently, and an epoch
# of dropout and batchnorm carries the difference on, so it may move a few of the 1,000 images.
ACC_TOL = 0.005  # absolute, 5 of 1,000 validation images
LOSS_TOL = 0.02  # relative


# --------------------------------------------------------------------------- the hand-written side

class ConvNet(nn.Module):
    """The spec's convnet as a person writes it; the layers with weights are named after specc's
    nodes, so that specc's initial weights load as they are, and built in the same order, so that
    the same seed leaves the random generator where specc's leaves it (the same dropout masks)."""

    def __init__(self):
        super().__init__()
        c1, c2 = WIDTHS
        self.conv2d = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.batchnorm = nn.BatchNorm2d(c1)
        self.conv2d_1 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(c2)
        self.linear = nn.Linear(c2 * 7 * 7, HIDDEN)
        self.out = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = (x * SCALE).view(-1, 1, 28, 28)
        h = F.max_pool2d(F.relu(self.batchnorm(self.conv2d(img))), 2)
        h = F.max_pool2d(F.relu(self.batchnorm_1(self.conv2d_1(h))), 2)
        h = F.dropout(F.relu(self.linear(h.flatten(1))), DROPOUT, self.training)
        return self.out(h)


def hand_validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross entropy, accuracy) over the validation set, as specc computes them (in float64)."""
    logits = predict(model, (x,), VALID_BATCH).double()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(dim=-1) == y).double().mean())


def hand_train(prepared, init_state: dict, batch: int, epochs: int = 1, fused: bool = False):
    """An everyday PyTorch loop (common.hand_epochs). Returns (model, valid loss, valid accuracy, seconds
    of the epoch loop plus validation, the span specc's EpochRecord.seconds covers)."""
    torch.manual_seed(SEED)  # dropout draws from the generator where building the model leaves it
    model = ConvNet().to(DEVICE)
    model.load_state_dict(init_state)  # start from specc's initial weights, whatever our init gave
    model.train()
    x = torch.as_tensor(prepared.train["x"], dtype=torch.float32, device=DEVICE)
    y = torch.as_tensor(prepared.train["y"], device=DEVICE)
    x_valid = torch.as_tensor(prepared.valid["x"], dtype=torch.float32, device=DEVICE)
    y_valid = torch.as_tensor(prepared.valid["y"], device=DEVICE)
    steps = steps_per_epoch(len(y), batch)
    # The everyday loop takes AdamW's default implementation; `fused` asks for torch's fused kernel,
    # which specc uses.
    opt, sched = one_cycle_adamw(model, steps * epochs, LR, BETAS, EPS, WD, PCT_START, DIV, FINAL_DIV,
                                 MOMS, fused)
    _, (valid_loss, valid_acc), seconds = hand_epochs(
        model, (x,), y, F.cross_entropy, opt, sched, batch, steps, epochs, SEED, DEVICE,
        validate=lambda m: hand_validate(m, x_valid, y_valid))
    return model, valid_loss, valid_acc, seconds[-1]


# --------------------------------------------------------------------------- the specc side

def specc_setup(batch: int):
    spec, _ = load_spec(SPEC, ["train.fit.epochs=1", f"data.batch={batch}"])
    prepared = prepare(spec.data, spec.model.inputs)
    plan = make_plan(spec, prepared)
    return spec, prepared, plan


def check_settings(spec, prepared, plan, batch: int) -> None:
    """The hand-written constants must be what specc trains with, on the spec's own sample."""
    opt, fit = spec.train.optimizer, spec.train.fit
    assert opt.kind == "adam" and isinstance(fit, FitOneCycle), (opt, fit)
    assert (opt.betas, opt.eps, opt.wd) == (BETAS, EPS, WD), opt
    assert (fit.lr, fit.pct_start, fit.div, fit.final_div) == (LR, PCT_START, DIV, FINAL_DIV), fit
    assert fit.moms[:2] == MOMS, fit.moms
    assert spec.train.seed == SEED and spec.train.loss == "cross_entropy" and not spec.train.l2
    assert spec.model.inputs == ("x",) and spec.data.target.name == "y"
    assert prepared.train["x"].shape == (N_TRAIN, 784) and prepared.valid["x"].shape == (N_VALID, 784), \
        (prepared.train["x"].shape, prepared.valid["x"].shape)
    assert prepared.vocabs["y"].size == N_CLASSES
    assert plan.batch == batch and plan.epochs == 1
    assert plan.steps_per_epoch == max(1, plan.n_train // batch)


def specc_epoch(spec, prepared, plan):
    """One call of specc.training.loop.train: (model, valid loss, valid accuracy, wall s, CPU s of the call,
    loop+valid wall s)."""
    (model, history), wall, cpu = timed(train, spec, prepared, plan, RunOptions(str(DEVICE)))
    rec = history.records[-1]
    return model, rec.valid_loss, rec.metrics["accuracy"], wall, cpu, rec.seconds


def hand_epoch(prepared, init_state, batch, fused=False):
    (model, valid_loss, valid_acc, loop), wall, cpu = timed(hand_train, prepared, init_state, batch,
                                                               fused=fused)
    return model, valid_loss, valid_acc, wall, cpu, loop


# --------------------------------------------------------------------------- the benchmark

def specc_start(spec, prepared) -> tuple[dict, torch.Tensor]:
    """specc's initial weights and the random generator's state after building them (what the
    first dropout mask is drawn from)."""
    model = build_model(spec, prepared)
    return clone_state(model.state_dict()), torch.get_rng_state()


def bench_batch(batch: int, reps: int) -> dict:
    spec, prepared, plan = specc_setup(batch)
    check_settings(spec, prepared, plan, batch)
    # specc's initial model is seeded: the same weights every call. Copy them into the hand model.
    init_state, specc_rng = specc_start(spec, prepared)

    torch.manual_seed(SEED)
    own = ConvNet()
    same_init = all(torch.equal(v, init_state[k]) for k, v in own.state_dict().items())
    same_rng = torch.equal(torch.get_rng_state(), specc_rng)  # so the same dropout masks
    del own

    return {**three_loops(spec, prepared, plan, init_state, batch, reps, specc_epoch, hand_epoch, ACC_TOL,
                          LOSS_TOL),
            "hand_own_init_equals_specc": same_init, "same_dropout_generator": same_rng}


def profile(batch: int, steps: int, top: int = 14) -> None:
    """cProfile of the three loops on the first `steps` steps of an epoch (after a warm-up run)."""
    spec, prepared, plan = specc_setup(batch)
    steps = min(steps, plan.steps_per_epoch)
    n_rows = steps * batch
    small = dataclasses.replace(prepared, train={k: v[:n_rows] for k, v in prepared.train.items()})
    small_plan = make_plan(spec, small)
    init_state, _ = specc_start(spec, prepared)
    profile_runs((("specc", lambda: specc_epoch(spec, small, small_plan)),
                  ("hand-written, default AdamW", lambda: hand_epoch(small, init_state, batch)),
                  ("hand-written, fused AdamW", lambda: hand_epoch(small, init_state, batch, fused=True))),
                 steps, batch, top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, 15, 15, "side", "the loops")
    ap.set_defaults(batches=[64, 512])
    args = ap.parse_args(argv)
    json_path = Path(args.json).resolve() if args.json else None
    os.chdir(ROOT)  # the spec's own paths are relative to the spec
    set_threads(args.threads)

    print(f"specc vs hand-written PyTorch, one epoch of {SPEC} (its {N_TRAIN:,} / {N_VALID:,}-row MNIST "
          "sample) on the CPU")
    print_env()
    if args.profile:
        profile(args.batches[0], args.profile)
        return 0
    medians = {"specc": "specc_s", "hand": "hand_s", "fused": "fused_hand_s"}
    rows = run_batches(args, bench_batch, 15, 15, medians,
                       extra=lambda row: f", fused hand {row['fused_hand_s']:.3f}s")

    print()
    head = (f"{'batch':>5}  {'steps':>5}  {'specc s/epoch':>13}  {'hand s/epoch':>12}  {'ratio':>6}  "
            f"{'CPU ratio':>9}  {'loop ratio':>10}  {'fused hand s':>12}  {'ratio':>6}  {'CPU ratio':>9}")
    print_table(head, rows, lambda r: (
        f"{r['batch']:>5}  {r['steps']:>5}  {r['specc_s']:>13.3f}  {r['hand_s']:>12.3f}  "
        f"{r['ratio']:>6.3f}  {r['cpu_ratio']:>9.3f}  {r['loop_ratio']:>10.3f}  "
        f"{r['fused_hand_s']:>12.3f}  {r['fused_ratio']:>6.3f}  {r['fused_cpu_ratio']:>9.3f}"))
    print()
    head = (f"{'batch':>5}  {'specc acc':>9}  {'hand acc':>9}  {'fused acc':>9}  {'specc loss':>10}  "
            f"{'hand loss':>10}  {'fused loss':>10}  {'max |dW|':>8}  {'fused |dW|':>10}  agree")
    print_table(head, rows, lambda r: (
        f"{r['batch']:>5}  {r['specc_valid_accuracy']:>9.4f}  {r['hand_valid_accuracy']:>9.4f}  "
        f"{r['fused_valid_accuracy']:>9.4f}  {r['specc_valid_loss']:>10.6f}  {r['hand_valid_loss']:>10.6f}  "
        f"{r['fused_valid_loss']:>10.6f}  {r['max_abs_param_diff']:>8.1e}  "
        f"{r['max_abs_param_diff_fused']:>10.1e}  {'yes' if r['valid_numbers_agree'] else 'NO'}"))
    print()
    print("s/epoch: median wall time of one specc.training.loop.train call (model build, optimizer, schedule, one")
    print("  epoch, validation) and of the hand-written equivalent. ratio: specc / hand of those medians.")
    print("CPU ratio: the same with process CPU time (robust to other load when threads=1).")
    print("loop ratio: wall medians of the epoch loop plus validation only (the span of specc's")
    print("  EpochRecord.seconds).")
    print("fused hand s: the hand-written loop with AdamW(fused=True), as specc uses; ratio: specc / that.")
    print(f"acc, loss: validation accuracy and cross entropy over the {N_VALID:,} validation images after")
    print("  the epoch. max |dW|: largest difference of the trained weights (batchnorm statistics too),")
    print("  specc against the everyday loop (fused |dW|: against the fused one). agree: every accuracy")
    print(f"  within {ACC_TOL} of specc's and every loss within {LOSS_TOL:.0%} of it.")
    print("same dropout masks (the random generator where specc's is when training begins): "
          + ", ".join(f"batch {r['batch']} {r['same_dropout_generator']}" for r in rows))
    print_init_and_target(rows)

    if json_path:
        write_json(json_path, rows, spec=SPEC)
    return 0 if all(r["valid_numbers_agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
