"""What the bench scripts share: the timing harness of bench/collab.py, bench/mnist.py, bench/tabular.py
and bench/cnn.py, and the hand-written PyTorch loop they (and bench/finetune_torch.py) time specc against."""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn


def add_args(ap: argparse.ArgumentParser, small: int, large: int, unit: str, loops: str) -> None:
    """Add --quick, --json, --threads, --batches, --reps and --profile to `ap`."""
    ap.add_argument("--quick", action="store_true", help="smoke run: one timed epoch of each per batch size")
    ap.add_argument("--json", metavar="PATH", help="save the numbers as JSON")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (default 1: steadier on a small shared machine)")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--reps", type=int, default=None,
                    help=f"timed epochs of each {unit} (default: {small} for batch < 256, {large} otherwise;"
                    " 1 with --quick)")
    ap.add_argument("--profile", type=int, metavar="STEPS", default=0,
                    help=f"instead of timing, cProfile {loops} on STEPS steps of the first batch size")


def set_threads(threads: int) -> None:
    """torch.set_num_threads(threads) and a single inter-op thread."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def print_env() -> None:
    """Print the torch, python, CPU count and threads line."""
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"torch.set_num_threads({torch.get_num_threads()})")


def timed(fn, *args, **kwargs):
    """fn(*args, **kwargs) with the wall and process CPU seconds it took: (result, wall, cpu)."""
    cpu, start = time.process_time(), time.perf_counter()
    result = fn(*args, **kwargs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return result, wall, cpu


def clone_state(state: dict) -> dict:
    """A detached copy of a state dict."""
    return {k: v.detach().clone() for k, v in state.items()}


def one_cycle_adamw(model: nn.Module, total_steps: int, lr, betas, eps, wd, pct_start, div, final_div, moms,
                    fused: bool):
    """AdamW (torch's default implementation, or fused) with a cosine OneCycleLR: (optimizer, scheduler)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=wd,
                            fused=True if fused else None)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total_steps, pct_start=pct_start, anneal_strategy="cos",
        div_factor=div, final_div_factor=final_div, cycle_momentum=True,
        base_momentum=moms[1], max_momentum=moms[0])
    return opt, sched


def sync(device: torch.device) -> None:
    """Wait for a CUDA device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_epoch(rows: int, batch: int) -> int:
    """The number of whole batches: the last incomplete one is dropped, as specc does."""
    return max(1, rows // batch)


@torch.no_grad()
def predict(model: nn.Module, xs: tuple, chunk: int) -> torch.Tensor:
    """The model's outputs over whole columns, `chunk` rows at a time in eval mode (then training mode again),
    as specc's validation pass takes them."""
    model.eval()
    out = torch.cat([model(*(x[s:s + chunk] for x in xs)) for s in range(0, len(xs[0]), chunk)])
    model.train()
    return out


def hand_epochs(model: nn.Module, xs: tuple, y: torch.Tensor, loss_fn, opt, sched, batch: int, steps: int,
                epochs: int, seed: int, device: torch.device, validate=None, prefix: int = 0):
    """The everyday PyTorch loop over tensors on `device`: each epoch a fresh permutation from a generator
    seeded with `seed`, `steps` batches taken by index, and at each step zero_grad(set_to_none=True),
    backward, `opt.step()` and `sched.step()` (None: a constant rate); each step's loss kept as a detached
    tensor and averaged once at the end of the epoch; then `validate(model)` (None: nothing).

    Returns (mean training loss of the last epoch, the last validate(model), seconds of each epoch: the
    loop plus validation, with a CUDA device synchronised at both ends). With `prefix`, the first epoch
    stops after that many steps and the seconds are those steps' alone (the loss is then NaN)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    n, seconds, valid = len(y), [], None
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)
        losses = []
        for s in range(0, (prefix or steps) * batch, batch):
            idx = perm[s:s + batch]
            loss = loss_fn(model(*[x[idx] for x in xs]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.detach())
        if prefix:
            sync(device)
            return float("nan"), None, [time.perf_counter() - start]
        train_loss = float(torch.stack(losses).mean())
        valid = validate(model) if validate is not None else None
        seconds.append(time.perf_counter() - start)
    return train_loss, valid, seconds


def max_param_diff(specc_model: nn.Module, hand_model: nn.Module) -> float:
    """Largest difference between two models' state dicts (the same keys)."""
    a, b = specc_model.state_dict(), hand_model.state_dict()
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def alternate(reps: int, sides, run) -> dict:
    """Call run(side) -> (wall, cpu, loop) for each side in turn, reps times, gc.collect before each call."""
    times = {side: ([], [], []) for side in sides}  # wall, cpu, loop
    for _ in range(reps):  # ABCABC...
        for side in sides:
            gc.collect()
            for store, value in zip(times[side], run(side)):
                store.append(value)
    return times


def swapped_rounds(rounds: int, sides, run) -> dict:
    """run(side) for every side, `rounds` times, each round in the other order than the one before
    (AB BA AB ...), so that a slow spell of a shared machine falls on both sides; side -> [results]."""
    results, order = {side: [] for side in sides}, list(sides)
    for _ in range(rounds):
        for side in order:
            results[side].append(run(side))
        order.reverse()
    return results


def run_batches(args, bench_batch, small: int, large: int, medians: dict, unit: str = "side",
                extra=lambda row: "") -> list:
    """bench_batch over args.batches, counting each row's outliers and printing a progress line."""
    rows = []
    for batch in args.batches:
        reps = args.reps or (1 if args.quick else (small if batch < 256 else large))
        row = bench_batch(batch, reps)
        rows.append(row)
        slow = sum(t > 1.25 * row[key] for side, key in medians.items() for t in row[f"{side}_all_s"])
        row["outliers"] = slow
        note = (f"; {slow} epochs over 1.25x their {unit}'s median (other load on the machine?)"
                if slow else "")
        print(f"  batch {batch}: {row['steps']} steps, {reps} timed epochs each; specc {row['specc_s']:.3f}s,"
              f" hand {row['hand_s']:.3f}s{extra(row)}{note}", flush=True)
    return rows


def print_table(head: str, rows, line) -> None:
    """Print a header, a rule under it and line(row) for each row."""
    print(head)
    print("-" * len(head))
    for r in rows:
        print(line(r))


def print_init_and_target(rows) -> None:
    """Print the same-init line and whether the worst ratio meets the 1.10 target."""
    print("hand model's own seeded init equals specc's initial weights: "
          + ", ".join(f"batch {r['batch']} {r['hand_own_init_equals_specc']}" for r in rows))
    worst = max(r["ratio"] for r in rows)
    print(f"target: ratio <= 1.10; worst ratio {worst:.3f}: {'met' if worst <= 1.10 else 'NOT met'}")


def profile_runs(runs, steps: int, batch: int, top: int) -> None:
    """cProfile each (name, run) after a warm-up call, printing the top functions by own time."""
    import cProfile
    import pstats

    for name, run in runs:
        run()
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        print(f"\n=== {name}: {steps} steps at batch {batch} (plus model build and validation), by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def write_json(json_path: Path, rows, **extra) -> None:
    """Write the environment, `extra` and the rows to json_path, and say so."""
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "machine": platform.machine(), **extra,
        "rows": rows,
    }
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {json_path}")


THREE_SIDES = ("specc", "hand", "fused")  # specc, the everyday hand-written loop, the one with fused AdamW


def three_loops(spec, prepared, plan, init_state: dict, batch: int, reps: int, specc_epoch, hand_epoch,
                acc_tol: float, loss_tol: float) -> dict:
    """specc's epoch against the everyday and the fused hand-written ones (`hand_epoch(prepared,
    init_state, batch, fused=...)`): a warm-up epoch of each that also gives the validation numbers
    and weight differences, then `reps` alternated timed epochs; the medians and their ratios."""
    # Warm-up (and correctness): one epoch of each.
    s_model, s_loss, s_acc, *_ = specc_epoch(spec, prepared, plan)
    h_model, h_loss, h_acc, *_ = hand_epoch(prepared, init_state, batch)
    f_model, f_loss, f_acc, *_ = hand_epoch(prepared, init_state, batch, fused=True)
    diff = max_param_diff(s_model, h_model)
    diff_fused = max_param_diff(s_model, f_model)
    del s_model, h_model, f_model

    first = {"specc": (s_loss, s_acc), "hand": (h_loss, h_acc), "fused": (f_loss, f_acc)}

    def run(side):
        if side == "specc":
            _, loss, acc, *t = specc_epoch(spec, prepared, plan)
        else:
            _, loss, acc, *t = hand_epoch(prepared, init_state, batch, fused=side == "fused")
        assert (loss, acc) == first[side], (side, loss, acc, first[side])  # deterministic run to run
        return t

    times = alternate(reps, THREE_SIDES, run)
    (s_wall, s_cpu, s_loop), (h_wall, h_cpu, h_loop), (f_wall, f_cpu, f_loop) = (times[s] for s in THREE_SIDES)

    agree = all(abs(acc - s_acc) <= acc_tol and abs(loss - s_loss) <= loss_tol * s_loss
                for loss, acc in ((h_loss, h_acc), (f_loss, f_acc)))
    med = statistics.median
    return {
        "batch": batch, "steps": plan.steps_per_epoch, "reps": reps,
        "specc_s": med(s_wall), "hand_s": med(h_wall), "ratio": med(s_wall) / med(h_wall),
        "specc_cpu_s": med(s_cpu), "hand_cpu_s": med(h_cpu), "cpu_ratio": med(s_cpu) / med(h_cpu),
        "specc_loop_s": med(s_loop), "hand_loop_s": med(h_loop), "loop_ratio": med(s_loop) / med(h_loop),
        "specc_min_s": min(s_wall), "hand_min_s": min(h_wall), "min_ratio": min(s_wall) / min(h_wall),
        "fused_hand_s": med(f_wall), "fused_ratio": med(s_wall) / med(f_wall),
        "fused_cpu_s": med(f_cpu), "fused_cpu_ratio": med(s_cpu) / med(f_cpu),
        "fused_loop_s": med(f_loop), "fused_loop_ratio": med(s_loop) / med(f_loop),
        "specc_valid_loss": s_loss, "hand_valid_loss": h_loss, "fused_valid_loss": f_loss,
        "specc_valid_accuracy": s_acc, "hand_valid_accuracy": h_acc, "fused_valid_accuracy": f_acc,
        "max_abs_param_diff": diff, "max_abs_param_diff_fused": diff_fused, "valid_numbers_agree": agree,
        "specc_all_s": s_wall, "hand_all_s": h_wall, "fused_all_s": f_wall,
        "specc_cpu_all_s": s_cpu, "hand_cpu_all_s": h_cpu, "fused_cpu_all_s": f_cpu,
        "specc_loop_all_s": s_loop, "hand_loop_all_s": h_loop, "fused_loop_all_s": f_loop,
    }
