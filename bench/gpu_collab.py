"""Benchmark (GPU): the collab spec's training epoch, specc against a hand-written eager PyTorch loop.

Three loops train specs/collab.spec's model (fastai's EmbeddingDotBias) from the same initial
weights, on the same batches, with the same optimizer and one-cycle schedule:
  ref    the idiomatic eager loop: data on the GPU, batches by index, fused AdamW, OneCycleLR
  plain  specc.training.loop.train with graph=False (the same kind of loop, as specc writes it)
  graph  specc.training.loop.train as it runs by default on a GPU: the step replayed from a CUDA graph
         (graph-nc: the same with the optimizer update uncompiled, SPECC_COMPILE=0)
on two data sets:
  100k   specs/data/ratings.csv (MovieLens-100k-sized: 100,000 ratings, 90,000 training rows)
  25M    a generated set of MovieLens 25M's shape (162,541 users, 59,047 items, 25,000,000
         ratings, 10% held out), made on the GPU by `movielens_25m_shaped` (the law of
         specc.data.synth, written for the GPU so that the data takes a second, not a minute) and
         handed to specc as prepared arrays (reading a 25M-row CSV is bench/load.py's business).

Every epoch is timed from its first step to the end of its validation pass (the span of specc's
EpochRecord.seconds) with the device synchronised at both ends. Where a whole epoch would take
minutes (the 25M set at batch 64), the first --prefix steps are timed and the epoch extrapolated.
Usage (on the GPU machine; bench/gpu.sh runs it):

    python bench/gpu_collab.py --json out.json
    python bench/gpu_collab.py --quick          # smoke run: fewer epochs, a 2.5M set
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collab import hand_train
from common import sync, write_json

from specc.data.prepare import Prepared, Vocab, prepare
from specc.model.plan import make_plan
from specc.training.loop import Interrupted, StopRequest, build_model, train
from specc.training.options import RunOptions
from specc.training.run import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs/collab.spec"
SHAPE_25M = {"users": 162_541, "items": 59_047, "ratings": 25_000_000}


def peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


# --------------------------------------------------------------------------- data

def movielens_25m_shaped(device, users: int, items: int, ratings: int, seed: int = 0, valid: float = 0.1):
    """(train, valid) dicts of int64 user/item indices (1-based: 0 is specc's unknown id) and
    float32 ratings. Item popularity follows rank^-0.9, user activity a log-normal law, each
    (user, item) pair at most once; ratings come from 8 latent factors, biases and noise, rounded
    to 1..5 (specc.data.synth's law)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def draw(weights, n):
        cdf = torch.cumsum(weights, 0)
        cdf /= cdf[-1].clone()
        return torch.searchsorted(cdf, torch.rand(n, generator=g, device=device, dtype=torch.float64)).clamp_(
            max=len(weights) - 1)

    item_w = (torch.arange(1, items + 1, device=device, dtype=torch.float64) ** -0.9)[
        torch.randperm(items, generator=g, device=device)]
    user_w = torch.randn(users, generator=g, device=device, dtype=torch.float64).exp()
    keys = torch.zeros(0, dtype=torch.int64, device=device)
    while len(keys) < ratings:
        n = int((ratings - len(keys)) * 1.3) + 1000
        keys = torch.unique(torch.cat([keys, draw(user_w, n) * items + draw(item_w, n)]))
    keys = keys[torch.randperm(len(keys), generator=g, device=device)[:ratings]]
    u, i = keys // items, keys % items
    uf = torch.randn(users, 8, generator=g, device=device) * 0.5
    itf = torch.randn(items, 8, generator=g, device=device) * 0.5
    ub = torch.randn(users, generator=g, device=device) * 0.4
    ib = torch.randn(items, generator=g, device=device) * 0.5
    r = 3.5 + ub[u] + ib[i] + 0.5 * (uf[u] * itf[i]).sum(1) + 0.8 * torch.randn(ratings, generator=g, device=device)
    r = r.round().clamp(1, 5)
    cut = ratings - int(ratings * valid)
    cols = {"user": u + 1, "item": i + 1, "rating": r.float()}
    return ({k: v[:cut] for k, v in cols.items()}, {k: v[cut:] for k, v in cols.items()})


def prepared_from(train_t: dict, valid_t: dict, users: int, items: int) -> Prepared:
    """A specc Prepared over generated arrays, ids 0..n-1 as the vocabularies' values."""
    train_np = {k: v.cpu().numpy() for k, v in train_t.items()}
    valid_np = {k: v.cpu().numpy() for k, v in valid_t.items()}
    vocabs = {}
    for col, n in (("user", users), ("item", items)):
        counts = np.bincount(train_np[col], minlength=n + 1)[1:]
        vocabs[col] = Vocab(col, tuple(str(k) for k in range(n)), tuple(int(c) for c in counts), True)
    raw_valid = {"user": valid_np["user"][:1000] - 1, "item": valid_np["item"][:1000] - 1,
                 "rating": valid_np["rating"][:1000]}
    return Prepared(train_np, valid_np, vocabs, raw_valid, "<generated: MovieLens 25M's shape>")


def small_set() -> Prepared:
    """specs/collab.spec's own data, prepared."""
    spec, _ = load_spec(str(SPEC), [])
    return prepare(spec.data, spec.model.inputs)


def large_set(device, quick: bool) -> Prepared:
    """The MovieLens-25M-shaped set (a tenth of it with `quick`), prepared."""
    shape = {k: v // 10 for k, v in SHAPE_25M.items()} if quick else SHAPE_25M
    return prepared_from(*movielens_25m_shaped(device, **shape), shape["users"], shape["items"])


# --------------------------------------------------------------------------- the reference loop

def ref_loop(prepared: Prepared, init_state: dict, batch: int, epochs: int, device, prefix: int = 0) -> dict:
    """The idiomatic eager loop (bench/collab.py's, with torch's fused AdamW). Returns epoch seconds,
    valid MSE, peak memory (and, with `prefix`, the seconds of the first `prefix` steps of one epoch
    instead)."""
    peak_reset(device)
    _, mse, _, seconds = hand_train(prepared, init_state, batch, epochs, fused=True, device=device, prefix=prefix)
    steps = prepared.n_train // batch
    if prefix:
        return {"prefix_s": seconds[0], "steps": steps, "peak_mb": peak_mb(device)}
    return {"epoch_s": seconds, "valid_mse": mse, "steps": steps, "peak_mb": peak_mb(device)}


# --------------------------------------------------------------------------- specc

class PrefixTimer(StopRequest):
    """Stops a specc run after `steps` steps of its first epoch, timing them with the device
    synchronised at the first step and at the stop."""

    def __init__(self, steps: int, device):
        self.steps, self.device, self.calls, self.start, self.seconds = steps, device, 0, None, None

    @property
    def requested(self) -> bool:
        self.calls += 1
        if self.calls == 1:
            sync(self.device)
            self.start = time.perf_counter()
        if self.calls > self.steps:
            sync(self.device)
            self.seconds = time.perf_counter() - self.start
            return True
        return False


def specc_loop(spec, prepared, plan, device, graph: bool, prefix: int = 0, compiled: bool = True) -> dict:
    os.environ["SPECC_COMPILE"] = "1" if compiled else "0"
    # On a CPU (a smoke run of this script) the graph's step runs uncaptured.
    options = RunOptions(str(device), graph=graph) if device.type == "cuda" else RunOptions(
        str(device), graph=False, device_step="flat" if graph else False)
    peak_reset(device)
    sync(device)
    start = time.perf_counter()
    if prefix:
        timer = PrefixTimer(prefix, device)
        try:
            train(spec, prepared, plan, options, stop=timer)
        except Interrupted:
            pass
        return {"prefix_s": timer.seconds, "steps": plan.steps_per_epoch, "peak_mb": peak_mb(device)}
    _, history = train(spec, prepared, plan, options)
    sync(device)
    total = time.perf_counter() - start
    epochs = [r.seconds for r in history.records]
    return {"epoch_s": epochs, "valid_mse": history.records[-1].valid_loss, "steps": plan.steps_per_epoch,
            "peak_mb": peak_mb(device), "setup_s": total - sum(epochs)}


# --------------------------------------------------------------------------- the benchmark

def bench(name: str, prepared: Prepared, batch: int, epochs: int, device, loops, prefix: int = 0) -> list[dict]:
    spec, _ = load_spec(str(SPEC), [f"data.batch={batch}", f"train.fit.epochs={epochs}"])
    plan = make_plan(spec, prepared)
    init_state = {k: v.detach().clone() for k, v in build_model(spec, prepared).state_dict().items()}
    rows = []
    for loop in loops:
        gc.collect()
        try:
            if loop == "ref":
                r = ref_loop(prepared, init_state, batch, epochs, device, prefix)
            else:
                r = specc_loop(spec, prepared, plan, device, graph=loop.startswith("graph"), prefix=prefix,
                               compiled=loop != "graph-nc")
        except Exception as err:  # report and go on: one failing loop must not hide the others
            print(f"  {name} batch {batch} {loop}: FAILED: {type(err).__name__}: {err}", flush=True)
            rows.append({"set": name, "batch": batch, "loop": loop, "error": f"{type(err).__name__}: {err}"})
            continue
        if prefix:
            r["s_per_epoch"] = r["prefix_s"] / prefix * r["steps"]
            r["extrapolated"] = True
        else:
            r["s_per_epoch"] = statistics.median(r["epoch_s"][1:] if len(r["epoch_s"]) > 2 else r["epoch_s"])
            r["extrapolated"] = False
        r.update(set=name, batch=batch, loop=loop, epochs=epochs, prefix=prefix,
                 us_per_step=r["s_per_epoch"] / r["steps"] * 1e6, samples_per_s=r["steps"] * batch / r["s_per_epoch"])
        rows.append(r)
        print(f"  {name} batch {batch} {loop}: {r['s_per_epoch']:.3f} s/epoch"
              f"{f' (extrapolated from {prefix} steps)' if prefix else ''}, {r['us_per_step']:.0f} us/step, "
              f"valid MSE {r.get('valid_mse', float('nan')):.5f}, peak {r['peak_mb']:.0f} MB"
              + (f", setup {r['setup_s']:.2f} s" if "setup_s" in r else ""), flush=True)
    ref = next((r for r in rows if r["loop"] == "ref" and "error" not in r), None)
    for r in rows:
        if ref is not None and "error" not in r:
            r["speedup"] = ref["s_per_epoch"] / r["s_per_epoch"]
    return rows


def profile(name: str, prepared: Prepared, batch: int, steps: int, device, top: int = 14) -> None:
    """torch.profiler over the first `steps` replayed steps of a graph run: the kernels by device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    spec, _ = load_spec(str(SPEC), [f"data.batch={batch}", "train.fit.epochs=1"])
    plan = make_plan(spec, prepared)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        specc_loop(spec, prepared, plan, device, graph=True, prefix=steps)
    print(f"\n== profile: {name} batch {batch}, graph, {steps} steps (setup and capture included)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, a 2.5M set, short prefixes")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--prefix", type=int, default=20000, help="steps timed where a whole epoch is too long")
    ap.add_argument("--only", choices=("100k", "25M"), help="one data set only")
    ap.add_argument("--loops", nargs="+", default=["ref", "plain", "graph"],
                    help="which loops to time: ref plain graph graph-nc")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing, profile the graph's kernels (100k at 64, 25M at 65536)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference and specc alike: fp32 throughout
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    epochs = 2 if args.quick else 5
    prefix = 2000 if args.quick else args.prefix
    rows = []
    if args.profile:
        profile("100k", small_set(), 64, 500, device)
        profile("25M", large_set(device, args.quick), 65536, 100, device)
        return 0
    if args.only in (None, "100k"):
        small = small_set()
        print(f"100k: {small.n_train:,} training rows, {small.n_valid:,} valid", flush=True)
        rows += bench("100k", small, 64, epochs, device, args.loops)
    if args.only in (None, "25M"):
        start = time.perf_counter()
        large = large_set(device, args.quick)
        print(f"25M: {large.n_train:,} training rows, {large.n_valid:,} valid, made in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        rows += bench("25M", large, 65536, epochs, device, args.loops)
        rows += bench("25M", large, 4096, 1, device, args.loops)
        rows += bench("25M", large, 64, 1, device, [x for x in args.loops if x != "plain"], prefix=prefix)

    print()
    head = (f"{'set':<5} {'batch':>6} {'loop':<6} {'s/epoch':>8} {'us/step':>8} {'samples/s':>11} "
            f"{'peak MB':>8} {'valid MSE':>9} {'x ref':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['set']:<5} {r['batch']:>6} {r['loop']:<6} FAILED: {r['error'][:80]}")
            continue
        star = "*" if r["extrapolated"] else " "
        mse = f"{r['valid_mse']:.5f}" if "valid_mse" in r else "-"
        print(f"{r['set']:<5} {r['batch']:>6} {r['loop']:<6} {r['s_per_epoch']:>7.3f}{star} {r['us_per_step']:>8.1f} "
              f"{r['samples_per_s']:>11.3g} {r['peak_mb']:>8.0f} {mse:>9} {r.get('speedup', float('nan')):>6.2f}")
    print("s/epoch: median epoch (first step to the end of validation); * extrapolated from the first "
          f"{prefix} steps. x ref: the reference's s/epoch / this one's.")
    if args.json:
        write_json(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
