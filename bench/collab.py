"""Benchmark: one training epoch of specc's loop against a hand-written PyTorch loop (CPU).

Both sides train specs/collab.spec's model (fastai's EmbeddingDotBias) for one epoch from the same
initial weights, on the same batches (the same seeded permutation), with the same optimizer and
schedule, and then run the same validation pass. They are timed alternately (ABAB...) after a
warm-up; the medians are compared. Usage (from any directory):

    python bench/collab.py                 # batch 64 and 1024, the full run (about a minute on 2 cores)
    python bench/collab.py --quick         # smoke run: one timed epoch of each
    python bench/collab.py --json out.json # also save the numbers
    python bench/collab.py --busy          # specc's epoch with torch's default threads, 1 thread and
                                           # specc's default, on a quiet machine and beside a busy process

See bench/README.md for the method and the last measured tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from common import (add_args, alternate, clone_state, hand_epochs, max_param_diff, one_cycle_adamw, predict,
                    print_env, print_init_and_target, print_table, profile_runs, run_batches, set_threads,
                    steps_per_epoch, timed, write_json)
from specc.data.prepare import prepare
from specc.language.spec import FitOneCycle
from specc.model.plan import make_plan
from specc.model.sized import sized_model
from specc.training.loop import build_model, default_threads, step_multiply_adds, torch_threads, train
from specc.training.options import RunOptions
from specc.training.run import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/collab.spec"
DEVICE = torch.device("cpu")
DEVICE_STEP = False  # --device-step: specc's device-resident step (specc.training.fastpath) instead of the plain loop

# The hand-written loop's settings, written out as a person would; `check_settings` makes sure they
# are the ones specc reads from the spec, so that the two loops do the same work.
SEED = 42
LR = 5e-3
BETAS = (0.9, 0.99)
WD = 0.1
EPS = 1e-8
PCT_START, DIV, FINAL_DIV, MOMS = 0.3, 25.0, 1e4, (0.95, 0.85)
N_FACTORS = 40
Y_RANGE = (0.0, 5.5)
VALID_BATCH = 8192  # specc evaluates in chunks of this size (8x on a GPU); the hand-written pass does the same


# --------------------------------------------------------------------------- the hand-written side

def embedding(n: int, dim: int) -> nn.Embedding:
    """fastai's Embedding: initialised from a truncated normal with std 0.01."""
    emb = nn.Embedding(n, dim)
    nn.init.trunc_normal_(emb.weight, std=0.01, a=-0.02, b=0.02)
    return emb


class EmbeddingDotBias(nn.Module):
    """fastai's collab model: dot product of user and item factors plus a bias each, squashed."""

    def __init__(self, n_users: int, n_items: int, n_factors: int, y_range: tuple[float, float]):
        super().__init__()
        self.y_range = y_range
        self.u = embedding(n_users, n_factors)
        self.i = embedding(n_items, n_factors)
        self.ub = embedding(n_users, 1)
        self.ib = embedding(n_items, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = self.u(users) * self.i(items)
        res = dot.sum(1) + self.ub(users).squeeze(1) + self.ib(items).squeeze(1)
        lo, hi = self.y_range
        return torch.sigmoid(res) * (hi - lo) + lo


def hand_validate(model: nn.Module, users: torch.Tensor, items: torch.Tensor, y: torch.Tensor) -> float:
    chunk = VALID_BATCH if y.device.type == "cpu" else 8 * VALID_BATCH
    pred = predict(model, (users, items), chunk)
    return float(((pred.double() - y.double()) ** 2).mean())


def hand_train(prepared, init_state: dict, batch: int, epochs: int = 1, fused: bool = False, device=None,
               prefix: int = 0):
    """An everyday PyTorch loop (common.hand_epochs), on `device` (default: the one the command line
    chose). Returns (model, valid MSE, mean train loss of the last epoch, seconds of each epoch: the
    loop plus validation, the span specc's EpochRecord.seconds covers, with a CUDA device synchronised
    at both ends). With `prefix`, the first epoch stops after that many steps, and the seconds are
    those steps' alone (valid MSE and train loss are then NaN)."""
    device = device or DEVICE
    n_users, n_items = prepared.vocabs["user"].size, prepared.vocabs["item"].size
    torch.manual_seed(SEED)
    model = EmbeddingDotBias(n_users, n_items, N_FACTORS, Y_RANGE).to(device)
    model.load_state_dict(init_state)  # start from specc's initial weights, whatever our init gave
    model.train()
    users = torch.as_tensor(prepared.train["user"], device=device)
    items = torch.as_tensor(prepared.train["item"], device=device)
    ratings = torch.as_tensor(prepared.train["rating"], device=device)
    v_users = torch.as_tensor(prepared.valid["user"], device=device)
    v_items = torch.as_tensor(prepared.valid["item"], device=device)
    v_ratings = torch.as_tensor(prepared.valid["rating"], device=device)
    steps = steps_per_epoch(len(ratings), batch)
    # The everyday loop takes AdamW's default implementation; `fused` asks for torch's fused kernel,
    # which specc uses, to show where specc's advantage comes from.
    opt, sched = one_cycle_adamw(model, steps * epochs, LR, BETAS, EPS, WD, PCT_START, DIV, FINAL_DIV,
                                 MOMS, fused)
    train_loss, valid_mse, seconds = hand_epochs(
        model, (users, items), ratings, nn.MSELoss(), opt, sched, batch, steps, epochs, SEED, device,
        validate=lambda m: hand_validate(m, v_users, v_items, v_ratings), prefix=prefix)
    return model, float("nan") if prefix else valid_mse, train_loss, seconds


# --------------------------------------------------------------------------- the specc side

def specc_setup(batch: int, spec_path: str = SPEC, sets: list[str] = ()):
    spec, _ = load_spec(spec_path, [*sets, f"data.batch={batch}", "train.fit.epochs=1"])
    prepared = prepare(spec.data, spec.model.inputs)
    plan = make_plan(spec, prepared)
    return spec, prepared, plan


def check_settings(spec, plan, batch: int) -> None:
    """The hand-written constants must be what specc trains with."""
    opt, fit = spec.train.optimizer, spec.train.fit
    assert opt.kind == "adam" and isinstance(fit, FitOneCycle), (opt, fit)
    assert (opt.betas, opt.eps, opt.wd) == (BETAS, EPS, WD), opt
    assert (fit.lr, fit.pct_start, fit.div, fit.final_div) == (LR, PCT_START, DIV, FINAL_DIV), fit
    assert fit.moms[:2] == MOMS, fit.moms
    assert spec.train.seed == SEED and spec.train.loss == "mse"
    assert plan.batch == batch and plan.epochs == 1
    assert plan.steps_per_epoch == max(1, plan.n_train // batch)


def specc_epoch(spec, prepared, plan):
    """One call of specc.training.loop.train: (model, valid MSE, wall s, CPU s of the call, loop+valid wall s)."""
    (model, history), wall, cpu = timed(train, spec, prepared, plan, RunOptions(str(DEVICE), device_step=DEVICE_STEP))
    rec = history.records[-1]
    return model, rec.valid_loss, wall, cpu, rec.seconds


def hand_epoch(prepared, init_state, batch, fused=False):
    (model, valid_mse, _, loop), wall, cpu = timed(hand_train, prepared, init_state, batch, fused=fused)
    return model, valid_mse, wall, cpu, loop[-1]


# --------------------------------------------------------------------------- the benchmark

def bench_batch(batch: int, reps: int) -> dict:
    spec, prepared, plan = specc_setup(batch)
    check_settings(spec, plan, batch)
    # specc's initial model is seeded: the same weights every call. Copy them into the hand model.
    init_state = clone_state(build_model(spec, prepared).state_dict())

    torch.manual_seed(SEED)
    own = EmbeddingDotBias(prepared.vocabs["user"].size, prepared.vocabs["item"].size, N_FACTORS, Y_RANGE)
    same_init = all(torch.equal(v, init_state[k]) for k, v in own.state_dict().items())
    del own

    # Warm-up (and correctness): one epoch of each.
    s_model, s_mse, *_ = specc_epoch(spec, prepared, plan)
    h_model, h_mse, *_ = hand_epoch(prepared, init_state, batch)
    f_model, f_mse, *_ = hand_epoch(prepared, init_state, batch, fused=True)
    diff = max_param_diff(s_model, h_model)
    diff_fused = max_param_diff(s_model, f_model)
    del s_model, h_model, f_model

    first = {"specc": s_mse, "hand": h_mse, "fused": f_mse}

    def run(side):
        if side == "specc":
            _, mse, *t = specc_epoch(spec, prepared, plan)
        else:
            _, mse, *t = hand_epoch(prepared, init_state, batch, fused=side == "fused")
        assert mse == first[side], (side, mse)  # deterministic run to run
        return t

    times = alternate(reps, ("specc", "hand", "fused"), run)
    (s_wall, s_cpu, s_loop), (h_wall, h_cpu, h_loop) = times["specc"], times["hand"]
    f_wall = times["fused"][0]

    med = statistics.median
    return {
        "batch": batch, "steps": plan.steps_per_epoch, "reps": reps,
        "specc_s": med(s_wall), "hand_s": med(h_wall), "ratio": med(s_wall) / med(h_wall),
        "specc_cpu_s": med(s_cpu), "hand_cpu_s": med(h_cpu), "cpu_ratio": med(s_cpu) / med(h_cpu),
        "specc_loop_s": med(s_loop), "hand_loop_s": med(h_loop), "loop_ratio": med(s_loop) / med(h_loop),
        "specc_min_s": min(s_wall), "hand_min_s": min(h_wall), "min_ratio": min(s_wall) / min(h_wall),
        "fused_hand_s": med(f_wall), "fused_ratio": med(s_wall) / med(f_wall), "fused_valid_mse": f_mse,
        "max_abs_param_diff_fused": diff_fused,
        "specc_valid_mse": s_mse, "hand_valid_mse": h_mse, "max_abs_param_diff": diff,
        "hand_own_init_equals_specc": same_init,
        "specc_cpu_all_s": s_cpu, "hand_cpu_all_s": h_cpu,
        "specc_all_s": s_wall, "hand_all_s": h_wall, "specc_loop_all_s": s_loop, "hand_loop_all_s": h_loop,
    }


def profile(batch: int, steps: int, top: int = 12) -> None:
    """cProfile of both sides on the first `steps` steps of an epoch (after a warm-up epoch)."""
    spec, prepared, plan = specc_setup(batch)
    steps = min(steps, plan.steps_per_epoch)
    n_rows = steps * batch
    small = type(prepared)({k: v[:n_rows] for k, v in prepared.train.items()}, prepared.valid, prepared.vocabs,
                           prepared.raw_valid, prepared.path)
    small_plan = make_plan(spec, small)
    init_state = clone_state(build_model(spec, prepared).state_dict())
    profile_runs((("specc", lambda: specc_epoch(spec, small, small_plan)),
                  ("hand-written", lambda: hand_epoch(small, init_state, batch))), steps, batch, top)


# --------------------------------------------------------------------------- --busy: thread counts

# The other process: a real busy loop on one core (a single-threaded float32 matmul, as another
# training run or a build would keep a core busy). It says "busy" once it is running.
BURNER = ("import torch\ntorch.set_num_threads(1)\na = torch.rand(256, 256)\nprint('busy', flush=True)\n"
          "while True:\n    a @ a\n")


def start_burner() -> subprocess.Popen:
    """Start the busy process and wait until it is running."""
    burner = subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True)
    if burner.stdout.readline().strip() != "busy":
        burner.kill()
        raise RuntimeError("the busy process did not start")
    return burner


def bench_threads(batch: int, reps: int, torch_default: int, spec_path: str, sets: list[str]) -> dict:
    """One epoch of specc.training.loop.train with torch's default thread count, with one thread and with
    specc's default (specc.training.loop.default_threads), alternating, first on the machine as it is,
    then beside a process that keeps one core busy."""
    spec, prepared, plan = specc_setup(batch, spec_path, sets)
    counts = {"torch": torch_default, "one": 1, "specc": default_threads(spec, prepared)}

    def run(side):
        with torch_threads(counts[side]):
            _, mse, wall, cpu, loop = specc_epoch(spec, prepared, plan)
        return wall, cpu, loop

    for side in counts:  # warm-up
        run(side)
    quiet = alternate(reps, tuple(counts), run)
    burner = start_burner()
    try:
        busy = alternate(reps, tuple(counts), run)
    finally:
        burner.kill()
        burner.wait()
    med = statistics.median
    row = {"batch": batch, "steps": plan.steps_per_epoch, "reps": reps, "threads": counts, "spec": spec_path,
           "sets": list(sets), "step_multiply_adds": step_multiply_adds(sized_model(spec, prepared), batch)}
    for side in counts:
        q, b = quiet[side][0], busy[side][0]
        row[side] = {"quiet_s": med(q), "busy_s": med(b), "busy_over_quiet": med(b) / med(q),
                     "quiet_all_s": q, "busy_all_s": b}
    for side in counts:
        row[side]["quiet_over_one"] = row[side]["quiet_s"] / row["one"]["quiet_s"]
        row[side]["busy_over_one"] = row[side]["busy_s"] / row["one"]["busy_s"]
    return row


def busy_main(args, torch_default: int) -> int:
    """--busy: the thread-count table."""
    reps = args.reps or (1 if args.quick else 3)
    print(f"specc's epoch of {args.spec}{''.join(' --set ' + s for s in args.set)} with torch's default "
          f"threads ({torch_default}), 1 thread and specc's default, quiet and beside a busy process")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {reps} timed epochs of each side in each phase")
    rows = []
    for batch in args.batches:
        row = bench_threads(batch, reps, torch_default, args.spec, args.set)
        rows.append(row)
        print(f"  batch {batch}: {row['step_multiply_adds']:,} multiply-adds a step in the linear layers; "
              f"specc's default {row['threads']['specc']} thread(s)", flush=True)
    print()
    head = (f"{'batch':>5}  {'steps':>5}  {'threads':<16}  {'quiet s':>8}  {'busy s':>8}  {'busy/quiet':>10}  "
            f"{'quiet / 1 thread':>16}  {'busy / 1 thread':>15}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for side, name in (("torch", "torch default"), ("one", "1"), ("specc", "specc default")):
            v, label = r[side], f"{name} ({r['threads'][side]})"
            print(f"{r['batch']:>5}  {r['steps']:>5}  {label:<16}  "
                  f"{v['quiet_s']:>8.3f}  {v['busy_s']:>8.3f}  {v['busy_over_quiet']:>10.2f}  "
                  f"{v['quiet_over_one']:>16.2f}  {v['busy_over_one']:>15.2f}")
    print()
    print("quiet s, busy s: median wall seconds of one specc.training.loop.train call (one epoch and validation),")
    print("  on the machine as it is and beside a process keeping one core busy; the sides alternate.")
    if args.json:
        write_json(Path(args.json).resolve(), rows, torch_default_threads=torch_default)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, 11, 31, "side", "both loops")
    ap.add_argument("--device-step", action="store_true",
                    help="time specc's device-resident step (the GPU fast path's groundwork)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where both loops run (cuda: on the GPU machine, see bench/gpu.sh)")
    ap.add_argument("--busy", action="store_true",
                    help="instead: specc's epoch with torch's default threads, 1 thread and specc's default, "
                         "quiet and beside a busy process (default 3 timed epochs of each)")
    ap.add_argument("--spec", default=SPEC, help="--busy: the spec to train (default specs/collab.spec)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="--busy: a spec override")
    torch_default = torch.get_num_threads()  # before set_threads below changes it
    args = ap.parse_args(argv)
    global DEVICE, DEVICE_STEP
    DEVICE = torch.device(args.device)
    DEVICE_STEP = args.device_step
    json_path = Path(args.json).resolve() if args.json else None
    os.chdir(ROOT)  # the spec's data path is relative to the spec; --set paths to the cwd
    set_threads(args.threads)
    if args.busy:
        return busy_main(args, torch_default)

    print(f"specc vs hand-written PyTorch, one epoch of {SPEC} on the CPU")
    print_env()
    if args.profile:
        profile(args.batches[0], args.profile)
        return 0
    rows = run_batches(args, bench_batch, 11, 31, {"specc": "specc_s", "hand": "hand_s"})

    print()
    head = (f"{'batch':>5}  {'steps':>5}  {'specc s/epoch':>13}  {'hand s/epoch':>12}  {'ratio':>6}  "
            f"{'CPU ratio':>9}  {'loop ratio':>10}  {'fused hand s':>12}  {'ratio':>6}  "
            f"{'specc valid MSE':>15}  {'hand valid MSE':>14}  {'max |dW|':>8}")
    print_table(head, rows, lambda r: (
        f"{r['batch']:>5}  {r['steps']:>5}  {r['specc_s']:>13.3f}  {r['hand_s']:>12.3f}  "
        f"{r['ratio']:>6.3f}  {r['cpu_ratio']:>9.3f}  {r['loop_ratio']:>10.3f}  "
        f"{r['fused_hand_s']:>12.3f}  {r['fused_ratio']:>6.3f}  "
        f"{r['specc_valid_mse']:>15.6f}  {r['hand_valid_mse']:>14.6f}  {r['max_abs_param_diff']:>8.1e}"))
    print()
    print("s/epoch: median wall time of one specc.training.loop.train call (model build, optimizer, schedule, one")
    print("  epoch, validation) and of the hand-written equivalent. ratio: specc / hand of those medians.")
    print("CPU ratio: the same with process CPU time (robust to other load when threads=1).")
    print("loop ratio: wall medians of the epoch loop plus validation only (the span of specc's")
    print("  EpochRecord.seconds). max |dW|: largest difference of the trained weights (everyday loop).")
    print("fused hand s: the hand-written loop with AdamW(fused=True), as specc uses; ratio: specc / that.")
    print_init_and_target(rows)

    if json_path:
        write_json(json_path, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
