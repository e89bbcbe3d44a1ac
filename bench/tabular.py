"""Benchmark: one UCI Adult training epoch of specc's loop against a hand-written PyTorch loop (CPU).

Both sides train specs/adult.spec's model, fastai's TabularModel as specc's `tabular(...)` expands it
(an embedding per category column and per `<float>_na` indicator, embedding dropout 0.04, batchnorm on
the 6 float columns, linear(200) / ReLU / batchnorm / dropout 0.001, linear(100) / ReLU / batchnorm /
dropout 0.01, linear(2)), with cross entropy, AdamW (wd=0.01) and fit_one_cycle (lr 1e-2), for one
epoch on UCI Adult (/work/shared/data/adult/adult.data: 26,049 training / 6,512 validation rows), from
the same initial weights, on the same batches (the same seeded permutation, the last incomplete batch
dropped), and then run the same validation pass (loss and accuracy). specc applies fill_missing and
normalize inside the model, at every step; the hand-written loop does what fastai does: it fills,
normalises and builds the `_na` columns once, beforehand, inside its timed call. The hand-written loop
is timed with AdamW's everyday default implementation, with fused=True (as specc asks for), and, to
take the per-step procs apart from specc's own machinery, fused with the procs inside `forward` as
specc does them. The four are timed alternately (ABCDABCD...) after a warm-up; the medians are
compared. Usage (from any directory):

    python bench/tabular.py                 # batch 64 and 1024, the full run (about 2.5 minutes on 2 cores)
    python bench/tabular.py --quick         # smoke run: one timed epoch of each
    python bench/tabular.py --json out.json # also save the numbers

See bench/README.md for the method and the last measured table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import (add_args, alternate, clone_state, hand_epochs, one_cycle_adamw, predict, print_env,
                    print_init_and_target, print_table, profile_runs, run_batches, set_threads, steps_per_epoch,
                    timed, write_json)
from specc.data.prepare import prepare
from specc.language.spec import FitOneCycle
from specc.model.plan import make_plan
from specc.training.loop import build_model, train
from specc.training.options import RunOptions
from specc.training.run import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/adult.spec"
DATA = ROOT.parent / "shared/data/adult/adult.data"  # the whole UCI Adult set, outside the repository
DEVICE = torch.device("cpu")

# The hand-written loop's settings, written out as a person would; `check_settings` makes sure they
# are the ones specc reads from the spec, so that the two loops do the same work.
SEED = 0
LR = 1e-2
BETAS = (0.9, 0.999)
WD = 0.01
EPS = 1e-8
PCT_START, DIV, FINAL_DIV, MOMS = 0.3, 25.0, 1e4, (0.95, 0.85)
CATS = ("workclass", "education", "marital_status", "occupation", "relationship", "race", "sex",
        "native_country")
CONTS = ("age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week")
TARGET = "salary"
N_TRAIN, N_VALID = 26_049, 6_512
LAYERS, PS, EMB_DROP = (200, 100), (0.001, 0.01), 0.04
N_CLASSES = 2
VALID_BATCH = 8192  # specc evaluates in chunks of this size; the hand-written pass does the same

# How close the validation numbers must be to count as "the same training". The everyday loop's
# default AdamW and the fused kernel round differently.
ACC_TOL = 0.003  # absolute, about 20 of 6,512 validation rows
LOSS_TOL = 0.01  # relative


# --------------------------------------------------------------------------- the hand-written side

def emb_sz_rule(n_cat: int) -> int:
    """fastai's rule of thumb for an embedding's width (n_cat counts the #na# / unknown index 0)."""
    return min(600, round(1.6 * n_cat ** 0.56))


def embedding(n: int, dim: int) -> nn.Embedding:
    """fastai's Embedding: initialised from a truncated normal with std 0.01."""
    emb = nn.Embedding(n, dim)
    nn.init.trunc_normal_(emb.weight, std=0.01, a=-0.02, b=0.02)
    return emb


def lin_bn_drop(n_in: int, n_out: int, p: float) -> nn.Sequential:
    """fastai's LinBnDrop(lin_first=True): Linear, ReLU, BatchNorm1d, Dropout. (fastai drops the
    linear's bias before a batchnorm; specc keeps it, and so does this model, to be the same model.)"""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out), nn.Dropout(p))


class TabularModel(nn.Module):
    """fastai's TabularModel: x_cat (batch, n_cat) int64 indices, x_cont (batch, n_cont) floats."""

    def __init__(self, emb_szs, n_cont: int, out_sz: int, layers, ps, embed_p: float):
        super().__init__()
        self.embeds = nn.ModuleList([embedding(ni, nf) for ni, nf in emb_szs])
        self.emb_drop = nn.Dropout(embed_p)
        self.bn_cont = nn.BatchNorm1d(n_cont)
        n_emb = sum(nf for _, nf in emb_szs)
        sizes = [n_emb + n_cont, *layers]
        self.layers = nn.Sequential(*[lin_bn_drop(sizes[i], sizes[i + 1], p) for i, p in enumerate(ps)],
                                    nn.Sequential(nn.Linear(sizes[-1], out_sz)))

    def forward(self, x_cat: torch.Tensor, x_cont: torch.Tensor) -> torch.Tensor:
        x = torch.cat([e(x_cat[:, i]) for i, e in enumerate(self.embeds)], 1)
        x = self.emb_drop(x)
        x = torch.cat([x, self.bn_cont(x_cont)], 1)
        return self.layers(x)


class TabularModelProcsInside(TabularModel):
    """The same model, fed the raw columns as specc's is: one tensor per column, with fill_missing,
    the `_na` indicators and normalize computed inside `forward`, at every step, as specc's lowered
    graph computes them. Only to take specc's per-step procs apart from its own machinery."""

    def __init__(self, *args, stats):
        super().__init__(*args)
        self.stats = stats  # {column: (median, mean, std)}

    def forward(self, *columns: torch.Tensor) -> torch.Tensor:
        cats, conts = columns[:len(CATS)], columns[len(CATS):]
        nas = [torch.where(torch.isnan(x), 2, 1) for x in conts]
        normed = []
        for name, x in zip(CONTS, conts):
            median, mean, std = self.stats[name]
            normed.append(torch.unsqueeze((torch.where(torch.isnan(x), median, x) - mean) / std, -1))
        x = torch.cat([e(c) for e, c in zip(self.embeds, (*cats, *nas))], -1)
        x = self.emb_drop(x)
        x = torch.cat([x, self.bn_cont(torch.cat(normed, -1))], -1)
        return self.layers(x)


def column_stats(x: np.ndarray) -> tuple[float, float, float]:
    """(median, mean, std) of a training column as fastai's FillMissing and Normalize fit them: the
    median of the present values, then mean and std of the filled column."""
    median = float(np.nanmedian(x))
    filled = np.where(np.isnan(x), median, x).astype(np.float64)
    return median, float(filled.mean()), float(filled.std(ddof=1))


def preprocess(arrays: dict, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """fastai's procs, applied once to a whole split: the category indices plus a `<name>_na` column
    per float column (1 present, 2 missing) as x_cat, the filled and normalised floats as x_cont."""
    conts = [torch.as_tensor(arrays[c], device=DEVICE) for c in CONTS]
    x_cat = torch.stack([torch.as_tensor(arrays[c], device=DEVICE) for c in CATS]
                        + [torch.where(torch.isnan(x), 2, 1) for x in conts], 1)
    normed = []
    for name, x in zip(CONTS, conts):
        median, mean, std = stats[name]
        normed.append((torch.where(torch.isnan(x), median, x) - mean) / std)
    return x_cat, torch.stack(normed, 1)


def hand_model(emb_szs, stats, inside: bool) -> nn.Module:
    torch.manual_seed(SEED)
    if inside:
        return TabularModelProcsInside(emb_szs, len(CONTS), N_CLASSES, LAYERS, PS, EMB_DROP, stats=stats)
    return TabularModel(emb_szs, len(CONTS), N_CLASSES, LAYERS, PS, EMB_DROP)


def hand_validate(model: nn.Module, xs: tuple, y: torch.Tensor) -> tuple[float, float]:
    """(cross entropy, accuracy) over the validation set, as specc computes them (in float64)."""
    logits = predict(model, xs, VALID_BATCH).double()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(dim=-1) == y).double().mean())


def hand_train(prepared, emb_szs, stats, init_state: dict, batch: int, epochs: int = 1, fused: bool = False,
               inside: bool = False):
    """An everyday PyTorch loop (common.hand_epochs). Returns (model, valid loss, valid accuracy, mean
    train loss, seconds of the epoch loop plus validation, the same span specc's EpochRecord.seconds covers)."""
    model = hand_model(emb_szs, stats, inside).to(DEVICE)
    model.load_state_dict(init_state)  # start from specc's initial weights, whatever our init gave
    model.train()
    if inside:  # the raw columns, one tensor each, as specc takes them
        xs = tuple(torch.as_tensor(prepared.train[c], device=DEVICE) for c in CATS + CONTS)
        xs_valid = tuple(torch.as_tensor(prepared.valid[c], device=DEVICE) for c in CATS + CONTS)
    else:  # the procs, once, beforehand (fastai's way)
        xs = preprocess(prepared.train, stats)
        xs_valid = preprocess(prepared.valid, stats)
    y = torch.as_tensor(prepared.train[TARGET], device=DEVICE)
    y_valid = torch.as_tensor(prepared.valid[TARGET], device=DEVICE)
    steps = steps_per_epoch(len(y), batch)
    # The everyday loop takes AdamW's default implementation; `fused` asks for torch's fused kernel,
    # which specc uses.
    opt, sched = one_cycle_adamw(model, steps * epochs, LR, BETAS, EPS, WD, PCT_START, DIV, FINAL_DIV,
                                 MOMS, fused)
    train_loss, (valid_loss, valid_acc), seconds = hand_epochs(
        model, xs, y, F.cross_entropy, opt, sched, batch, steps, epochs, SEED, DEVICE,
        validate=lambda m: hand_validate(m, xs_valid, y_valid))
    return model, valid_loss, valid_acc, train_loss, seconds[-1]


# Names: specc's nodes -> fastai's TabularModel attributes.
def state_name_map() -> dict[str, str]:
    names = {f"emb_{c}": f"embeds.{k}" for k, c in enumerate(CATS + tuple(f"{c}_na" for c in CONTS))}
    names["bn_conts"] = "bn_cont"
    for k in range(len(LAYERS)):
        names[f"layer{k + 1}"] = f"layers.{k}.0"
        names[f"layer{k + 1}_bn"] = f"layers.{k}.2"
    names["out"] = f"layers.{len(LAYERS)}.0"
    return names


def to_hand_names(state: dict) -> dict:
    names = state_name_map()
    out = {}
    for key, value in state.items():
        module, _, attr = key.rpartition(".")
        out[f"{names[module]}.{attr}"] = value
    return out


# --------------------------------------------------------------------------- the specc side

def specc_setup(batch: int):
    spec, _ = load_spec(SPEC, [f'data.source.path="{DATA}"', "train.fit.epochs=1", f"data.batch={batch}"])
    prepared = prepare(spec.data, spec.model.inputs)
    plan = make_plan(spec, prepared)
    return spec, prepared, plan


def check_settings(spec, prepared, plan, batch: int, emb_szs, stats) -> None:
    """The hand-written constants must be what specc trains with, on the whole Adult set."""
    opt, fit = spec.train.optimizer, spec.train.fit
    assert opt.kind == "adam" and isinstance(fit, FitOneCycle), (opt, fit)
    assert (opt.betas, opt.eps, opt.wd) == (BETAS, EPS, WD), opt
    assert (fit.lr, fit.pct_start, fit.div, fit.final_div) == (LR, PCT_START, DIV, FINAL_DIV), fit
    assert fit.moms[:2] == MOMS, fit.moms
    assert spec.train.seed == SEED and spec.train.loss == "cross_entropy" and not spec.train.l2
    assert spec.model.inputs == CATS + CONTS and spec.data.target.name == TARGET, spec.model.inputs
    assert spec.data.procs == ("fill_missing", "categorify", "normalize"), spec.data.procs
    assert str(spec.data.source.path.resolve()) == str(DATA.resolve()), spec.data.source.path
    assert (prepared.n_train, prepared.n_valid) == (N_TRAIN, N_VALID), (prepared.n_train, prepared.n_valid)
    assert prepared.vocabs[TARGET].size == N_CLASSES
    assert plan.batch == batch and plan.epochs == 1
    assert plan.steps_per_epoch == max(1, plan.n_train // batch)
    # The procs' statistics: fastai's, computed here, equal specc's.
    for c in CONTS:
        s = prepared.stats[c]
        assert stats[c] == (s.median, s.mean, s.std), (c, stats[c], s)
    # The model: the same modules with the same shapes (names mapped).
    specc_state = build_model(spec, prepared).state_dict()
    hand_state = hand_model(emb_szs, stats, inside=False).state_dict()
    mapped = to_hand_names(specc_state)
    assert mapped.keys() == hand_state.keys(), (sorted(mapped), sorted(hand_state))
    for k, v in hand_state.items():
        assert v.shape == mapped[k].shape, (k, v.shape, mapped[k].shape)


def specc_epoch(spec, prepared, plan):
    """One call of specc.training.loop.train: (model, valid loss, valid accuracy, wall s, CPU s of the call,
    loop+valid wall s)."""
    (model, history), wall, cpu = timed(train, spec, prepared, plan, RunOptions(str(DEVICE)))
    rec = history.records[-1]
    return model, rec.valid_loss, rec.metrics["accuracy"], wall, cpu, rec.seconds


def hand_epoch(prepared, emb_szs, stats, init_state, batch, fused=False, inside=False):
    (model, valid_loss, valid_acc, _, loop), wall, cpu = timed(hand_train, prepared, emb_szs, stats, init_state,
                                                               batch, fused=fused, inside=inside)
    return model, valid_loss, valid_acc, wall, cpu, loop


# --------------------------------------------------------------------------- the benchmark

def max_param_diff(specc_model: nn.Module, hand_model: nn.Module) -> float:
    """Largest difference of the trained parameters (not the batchnorm running statistics)."""
    a = to_hand_names(dict(specc_model.named_parameters()))
    b = dict(hand_model.named_parameters())
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    return max(float((a[k].detach() - b[k].detach()).abs().max()) for k in a)


SIDES = ("specc", "hand", "fused", "inside")
VARIANTS = {"hand": {}, "fused": {"fused": True}, "inside": {"fused": True, "inside": True}}


def hand_inputs(prepared):
    emb_szs = [(prepared.vocabs[c].size, emb_sz_rule(prepared.vocabs[c].size)) for c in CATS]
    emb_szs += [(3, emb_sz_rule(3)) for _ in CONTS]  # `_na`: #na# (never used), present, missing
    stats = {c: column_stats(prepared.train[c]) for c in CONTS}
    return emb_szs, stats


def bench_batch(batch: int, reps: int) -> dict:
    spec, prepared, plan = specc_setup(batch)
    emb_szs, stats = hand_inputs(prepared)
    check_settings(spec, prepared, plan, batch, emb_szs, stats)
    # specc's initial model is seeded: the same weights every call. Copy them into the hand model.
    init_state = clone_state(to_hand_names(build_model(spec, prepared).state_dict()))
    own = hand_model(emb_szs, stats, inside=False)
    same_init = all(torch.equal(v, init_state[k]) for k, v in own.state_dict().items())
    del own

    # Warm-up (and correctness): one epoch of each.
    s_model, s_loss, s_acc, *_ = specc_epoch(spec, prepared, plan)
    first, diffs = {"specc": (s_loss, s_acc)}, {}
    for side, kw in VARIANTS.items():
        model, loss, acc, *_ = hand_epoch(prepared, emb_szs, stats, init_state, batch, **kw)
        first[side] = (loss, acc)
        diffs[side] = max_param_diff(s_model, model)
        del model
    del s_model

    def run(side):
        if side == "specc":
            _, loss, acc, *t = specc_epoch(spec, prepared, plan)
        else:
            _, loss, acc, *t = hand_epoch(prepared, emb_szs, stats, init_state, batch, **VARIANTS[side])
        assert (loss, acc) == first[side], (side, loss, acc, first[side])  # deterministic run to run
        return t

    times = alternate(reps, SIDES, run)  # ABCDABCD...

    agree = all(abs(first[side][1] - s_acc) <= ACC_TOL and abs(first[side][0] - s_loss) <= LOSS_TOL * s_loss
                for side in VARIANTS)
    med = statistics.median
    s_wall, s_cpu, s_loop = times["specc"]
    row = {"batch": batch, "steps": plan.steps_per_epoch, "reps": reps,
           "specc_s": med(s_wall), "specc_cpu_s": med(s_cpu), "specc_loop_s": med(s_loop),
           "specc_min_s": min(s_wall), "specc_valid_loss": s_loss, "specc_valid_accuracy": s_acc,
           "specc_all_s": s_wall, "specc_cpu_all_s": s_cpu, "specc_loop_all_s": s_loop}
    for side in VARIANTS:
        wall, cpu, loop = times[side]
        row.update({
            f"{side}_s": med(wall), f"{side}_cpu_s": med(cpu), f"{side}_loop_s": med(loop),
            f"{side}_min_s": min(wall),
            f"{side}_ratio": med(s_wall) / med(wall), f"{side}_cpu_ratio": med(s_cpu) / med(cpu),
            f"{side}_loop_ratio": med(s_loop) / med(loop), f"{side}_min_ratio": min(s_wall) / min(wall),
            f"{side}_valid_loss": first[side][0], f"{side}_valid_accuracy": first[side][1],
            f"max_abs_param_diff_{side}": diffs[side],
            f"{side}_all_s": wall, f"{side}_cpu_all_s": cpu, f"{side}_loop_all_s": loop,
        })
    row["ratio"] = row["hand_ratio"]  # the headline: specc / the everyday loop
    row["valid_numbers_agree"] = agree
    row["hand_own_init_equals_specc"] = same_init
    return row


def profile(batch: int, steps: int, top: int = 16) -> None:
    """cProfile of the four loops on the first `steps` steps of an epoch (after a warm-up run)."""
    spec, prepared, plan = specc_setup(batch)
    steps = min(steps, plan.steps_per_epoch)
    n_rows = steps * batch
    small = type(prepared)({k: v[:n_rows] for k, v in prepared.train.items()}, prepared.valid, prepared.vocabs,
                           prepared.raw_valid, prepared.path, prepared.stats)
    small_plan = make_plan(spec, small)
    emb_szs, stats = hand_inputs(prepared)
    init_state = clone_state(to_hand_names(build_model(spec, prepared).state_dict()))
    runs = [("specc", lambda: specc_epoch(spec, small, small_plan))]
    for side, label in (("hand", "hand-written, default AdamW"), ("fused", "hand-written, fused AdamW"),
                        ("inside", "hand-written, fused AdamW, procs inside forward")):
        runs.append((label, lambda kw=VARIANTS[side]: hand_epoch(small, emb_szs, stats, init_state, batch, **kw)))
    profile_runs(runs, steps, batch, top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, 19, 45, "loop", "the loops")
    args = ap.parse_args(argv)
    json_path = Path(args.json).resolve() if args.json else None
    if not DATA.is_file():
        print(f"bench/tabular.py: the UCI Adult data is missing: {DATA} is not a file.\n"
              "specs/adult.spec ships a 4,000-row sample; this benchmark times the whole set (32,561 rows).", file=sys.stderr)
        return 2
    os.chdir(ROOT)  # the spec's own paths are relative to the spec
    set_threads(args.threads)

    print(f"specc vs hand-written PyTorch, one epoch of {SPEC} on {DATA} on the CPU")
    print_env()
    if args.profile:
        profile(args.batches[0], args.profile)
        return 0
    rows = run_batches(args, bench_batch, 19, 45, {side: f"{side}_s" for side in SIDES}, unit="loop",
                       extra=lambda row: f", fused hand {row['fused_s']:.3f}s,"
                       f" fused hand with procs inside {row['inside_s']:.3f}s")

    print()
    head = (f"{'batch':>5}  {'steps':>5}  {'specc s':>7}  {'hand s':>7}  {'ratio':>6}  {'CPU ratio':>9}  "
            f"{'loop ratio':>10}  {'fused s':>7}  {'ratio':>6}  {'CPU ratio':>9}  {'inside s':>8}  {'ratio':>6}  "
            f"{'CPU ratio':>9}")
    print_table(head, rows, lambda r: (
        f"{r['batch']:>5}  {r['steps']:>5}  {r['specc_s']:>7.3f}  {r['hand_s']:>7.3f}  "
        f"{r['hand_ratio']:>6.3f}  {r['hand_cpu_ratio']:>9.3f}  {r['hand_loop_ratio']:>10.3f}  "
        f"{r['fused_s']:>7.3f}  {r['fused_ratio']:>6.3f}  {r['fused_cpu_ratio']:>9.3f}  "
        f"{r['inside_s']:>8.3f}  {r['inside_ratio']:>6.3f}  {r['inside_cpu_ratio']:>9.3f}"))
    print()
    head = (f"{'batch':>5}  {'specc acc':>9}  {'hand acc':>8}  {'fused acc':>9}  {'inside acc':>10}  "
            f"{'specc loss':>10}  {'hand loss':>10}  {'fused loss':>10}  {'inside loss':>11}  "
            f"{'|dW| hand':>9}  {'|dW| fused':>10}  {'|dW| inside':>11}  agree")
    print_table(head, rows, lambda r: (
        f"{r['batch']:>5}  {r['specc_valid_accuracy']:>9.4f}  {r['hand_valid_accuracy']:>8.4f}  "
        f"{r['fused_valid_accuracy']:>9.4f}  {r['inside_valid_accuracy']:>10.4f}  "
        f"{r['specc_valid_loss']:>10.6f}  {r['hand_valid_loss']:>10.6f}  {r['fused_valid_loss']:>10.6f}  "
        f"{r['inside_valid_loss']:>11.6f}  {r['max_abs_param_diff_hand']:>9.1e}  "
        f"{r['max_abs_param_diff_fused']:>10.1e}  {r['max_abs_param_diff_inside']:>11.1e}  "
        f"{'yes' if r['valid_numbers_agree'] else 'NO'}"))
    print()
    print("specc s, hand s: median wall time of one specc.training.loop.train call (model build, optimizer, schedule,")
    print("  one epoch, validation) and of the everyday hand-written equivalent (which also applies the procs")
    print("  to both splits, once). ratio: specc / hand of those medians; the target is <= 1.10.")
    print("CPU ratio: the same with process CPU time (robust to other load when threads=1).")
    print("loop ratio: wall medians of the epoch loop plus validation only (the span of specc's")
    print("  EpochRecord.seconds).")
    print("fused s: the hand-written loop with AdamW(fused=True), as specc uses; ratio: specc / that.")
    print("inside s: the fused loop with the procs (fill_missing, `_na`, normalize) computed in forward at")
    print("  every step from one tensor per column, as specc's model does; ratio: specc / that.")
    print("acc, loss: validation accuracy and cross entropy over the 6,512 validation rows after the epoch.")
    print("|dW|: largest difference of the trained parameters against specc's.")
    print(f"agree: every accuracy within {ACC_TOL} of specc's and every loss within {LOSS_TOL:.0%} of it.")
    print_init_and_target(rows)

    if json_path:
        write_json(json_path, rows, data=str(DATA))
    return 0 if all(r["valid_numbers_agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
