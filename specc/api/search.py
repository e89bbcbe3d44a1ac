"""The API's searches: a spec -> the learning-rate finder's sweep, a grid of trained variants, an
Optuna study; each as frames of the tables the commands print and the figures they write.
`specc lr-find` and `specc sweep` call `find_rates` and `train_grid`; specc.tune runs `specc tune`'s own code."""

from __future__ import annotations

import itertools
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path

from specc.api.run import checked_threads, folder_path, ready, spec_of
from specc.language.diagnostics import UsageError


MAX_STEPS = 100_000  # lr-find's steps at most: each one a training step, its three numbers kept for the plot
MAX_VARIANTS = 1_000  # a sweep's variants at most: each is checked and held before the first one trains


# ---------------------------------------------------------------- lr-find

def find_rates(checked, sets, out: Path, start: float, end: float, steps: int, device: str, threads, force: bool):
    """`specc lr-find`'s work: the sweep of the first stage, written as lr_find.csv and .png into `out`;
    (the lrfind.LRFindResult, its seconds)."""
    from specc.model.plan import make_plan
    from specc.training.loop import (
        batch_order, build_model, default_threads, find_lr, pick_device, torch_threads, training_batches,
    )
    from specc.training.run import write_lr_find
    from specc.training.runfolder import RunFolder
    from specc.training.steps import setup_stage

    if not (0 < start < end and math.isfinite(end / start)) or not 2 <= steps <= MAX_STEPS:
        raise UsageError(f"lr-find needs 0 < --start < --end, their ratio a finite number, and --steps from 2 to "
                         f"{MAX_STEPS:,}; found --start {start:g}, --end {end:g}, --steps {steps}")
    folder = RunFolder(out)
    with folder.locked():  # refused now rather than after the sweep; checked again when writing
        folder.check_lr_find(checked.source.text, list(sets), force)
    from specc.data.prepare import prepare

    prepared = prepare(checked.data, checked.model.inputs)
    plan = make_plan(checked, prepared)
    torch_device = pick_device(device)
    started = time.perf_counter()
    model = build_model(checked, prepared).to(torch_device)
    setup = setup_stage(checked, model, plan, plan.stages[0])  # the first stage's set-up: its frozen groups frozen
    with torch_threads(threads or default_threads(checked, prepared)):
        result = find_lr(checked, setup, training_batches(checked, prepared, plan, torch_device),
                         batch_order(checked, torch_device), torch_device, start, end, steps)
    seconds = time.perf_counter() - started
    with folder.locked():
        folder.check_lr_find(checked.source.text, list(sets), force)
        write_lr_find(folder, result, f"{checked.name}: lr-find")
    return result, seconds


@dataclass(frozen=True)
class LRFind:
    """The finder's sweep (`table`: lr, loss, smoothed_loss a step, as lr_find.csv), its suggestions
    (steep, minimum/10, valley; None where the curve is flat) and the figure of lr_find.png."""

    table: object
    suggestions: dict
    figure: object = field(repr=False)
    folder: Path

    def _repr_html_(self) -> str:
        from specc.api.display import table_html

        rows = [[name, "none (flat curve)" if lr is None else f"{lr:.3g}"] for name, lr in self.suggestions.items()]
        return table_html(["suggestion", "lr"], rows)


def lr_find(spec_or_path, data=None, out=None, overrides=None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, device: str = "auto", threads: int | None = None, force: bool = False) -> LRFind:
    """`specc lr-find`: an exponential sweep of the learning rate over the first stage, written into
    `out` (default runs/<spec name>/) as lr_find.csv and lr_find.png; an LRFind."""
    import pandas as pd

    from specc.api.frames import with_frame
    from specc.training.plot import lr_find_figure

    spec = spec_of(spec_or_path, overrides, None)
    checked = spec.checked if data is None else with_frame(spec.checked, data)
    folder = folder_path(out, "out", Path("runs") / checked.name)
    for name, value, kind, what in (("start", start, numbers.Real, "a number"), ("end", end, numbers.Real, "a number"),
                                    ("steps", steps, numbers.Integral, "a whole number")):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UsageError(f"{name}: expected {what}, found {value!r}")
    result, _ = find_rates(checked, spec.sets, folder, float(start), float(end), int(steps), device,
                           checked_threads(threads), force)
    table = pd.DataFrame({"lr": result.lrs, "loss": result.raw, "smoothed_loss": result.losses})
    from specc.api.display import shown

    return LRFind(table, dict(result.suggestions), shown(lr_find_figure(result, f"{checked.name}: lr-find")), folder)


# ---------------------------------------------------------------- sweep

def grid_axes(grid: dict) -> list[tuple[str, list[str]]]:
    """{key: [values]} as (key, [--set value texts]), each value written as overrides write it."""
    from specc.api.spec import set_text

    if not isinstance(grid, dict) or not grid:
        raise UsageError("grid: expected a dict of a key and its values, e.g. {'n_factors': [10, 40, 80]}")
    axes = []
    for key, given in grid.items():
        values = [] if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__") else list(
            itertools.islice(given, MAX_VARIANTS + 1))  # a generator read once, and never past what a sweep takes
        if not values:
            raise UsageError(f"grid[{key!r}]: expected a list of values to try, found {given!r}")
        if len(values) > MAX_VARIANTS:
            raise UsageError(f"grid[{key!r}]: more than {MAX_VARIANTS:,} values to try; a sweep trains at most "
                             f"{MAX_VARIANTS:,} variants")
        axes.append((key, [set_text(key, v).partition("=")[2] for v in values]))
    return axes


def variant_folder(out: Path, name: str) -> Path:
    return out / "".join(ch if ch.isalnum() or ch in "=,._-" else "_" for ch in name)


def train_grid(load_variant, axes, out: Path, device: str, threads, force: bool, mlflow=None, say=print,
               data=None):
    """`specc sweep`'s work: every combination of the axes' values, each checked with its folder before
    any trains, then trained (quiet) into a folder of its own; a variant that fails is a row, not the
    end. `load_variant(sets)` is a checked spec; (rows (name, combo, last record, folder), failed names)."""
    from specc.training.options import RunOptions
    from specc.training.run import train_run
    from specc.training.runfolder import RunFolder

    count = math.prod(len(vs) for _, vs in axes)
    if count > MAX_VARIANTS:
        sizes = " x ".join(f"{len(vs):,}" for _, vs in axes)
        raise UsageError(f"a sweep of {count:,} variants ({sizes}): at most {MAX_VARIANTS:,}; specc tune searches a "
                         "larger space by sampling it")
    combos = list(itertools.product(*[[(k, v) for v in vs] for k, vs in axes]))
    if RunFolder(out).contents().status is not None:
        raise UsageError(f"{out} holds a run of its own; a sweep's runs go into a folder of their own: choose "
                         "another --out")
    variants = []
    for combo in combos:  # check every variant, and every variant's folder, before training any
        sets, spec = load_variant([f"{k}={v}" for k, v in combo])
        if data is not None:
            from specc.api.frames import with_frame

            spec = with_frame(spec, data)
        name = ",".join(f"{key}={value}" for key, value in combo)
        folder = variant_folder(out, name)
        why = RunFolder(folder).refusal(force)
        if why is not None:
            raise UsageError(why)
        variants.append((combo, sets, spec, name, folder))
    rows, failed = [], []
    for k, (combo, sets, spec, name, folder) in enumerate(variants, start=1):
        say(f"[{k}/{len(variants)}] {name}")
        try:
            result = train_run(spec, folder, RunOptions(device, sets, quiet=True, force=force, threads=threads,
                                                        mlflow=mlflow))
        except failures() as err:  # one variant's failure is its row; the others still train
            say(f"specc: {name}: {variant_failure(err)}; its folder is {folder}/", error=True)
            failed.append(name)
            continue
        except interrupted() as stopped:  # (each `except` evaluated only when something is raised)
            stopped.variant = name  # which one, for the message
            raise
        rows.append((name, combo, result.history.records[-1], folder))
    return rows, failed


def failures() -> tuple[type, ...]:
    """The ways one training run fails that end it but not a sweep (imported when one is raised)."""
    from specc.export import ExportError
    from specc.training.run import OutOfMemory
    from specc.training.steps import TrainingDiverged

    return TrainingDiverged, OutOfMemory, ExportError


def interrupted() -> type:
    from specc.training.loop import Interrupted

    return Interrupted


def variant_failure(err: Exception) -> str:
    """A sweep variant's failure in words, as `specc train` says it."""
    from specc.export import ExportError
    from specc.training.steps import TrainingDiverged

    if isinstance(err, TrainingDiverged):
        return f"training stopped: {err}"
    if isinstance(err, ExportError):
        return f"export failed: {err}"
    return str(err)


def judged_by(rows, metrics) -> tuple[str, list[str]]:
    """The validation loss, and the spec's metrics; the final training loss where a variant has no validation."""
    judged = "valid_loss" if all(r[2].valid_loss is not None for r in rows) else "train_loss"
    return judged, list(metrics) if judged == "valid_loss" else []


@dataclass(frozen=True)
class Sweep:
    """A sweep's table (a row per variant, best first: its values, the loss it is judged by, the
    metrics, its folder; failed variants last) and the variants' runs by name."""

    table: object
    runs: dict
    folder: Path

    def _repr_html_(self) -> str:
        return self.table.to_html(index=False)


def sweep(spec_or_path, grid: dict, data=None, out=None, overrides=None, device: str = "auto",
          threads: int | None = None, force: bool = False, quiet: bool = False) -> Sweep:
    """`specc sweep --grid`: train every combination of `grid`'s values ({key: [values]}), each in a folder of
    its own under `out` (default runs/<spec name>-sweep/); a Sweep."""
    import pandas as pd

    from specc.api.run import Run
    from specc.api.spec import load

    spec = spec_of(spec_or_path, overrides, None)
    axes = grid_axes(grid)
    source = spec.path if spec.path is not None else spec.text
    out = folder_path(out, "out", Path("runs") / f"{spec.name}-sweep")

    def load_variant(extra):
        sets = [*spec.sets, *extra]
        return sets, load(source, sets, spec.name if spec.path is None else None).checked

    def say(line, error=False):
        if not quiet:
            print(line, flush=True)

    rows, failed = train_grid(load_variant, axes, out, device, checked_threads(threads), force, say=say, data=data)
    judged, metrics = judged_by(rows, spec.checked.train.metrics)
    rows.sort(key=lambda r: getattr(r[2], judged))
    table = [{"variant": name, **{k: v for k, v in combo}, judged: getattr(last, judged),
              **{m: last.metrics[m] for m in metrics}, "folder": str(folder)} for name, combo, last, folder in rows]
    table += [{"variant": name, judged: float("nan"), "folder": str(variant_folder(out, name))} for name in failed]
    return Sweep(pd.DataFrame(table), {name: Run(folder) for name, _, _, folder in rows}, out)


# ---------------------------------------------------------------- tune

@dataclass(frozen=True)
class Tune:
    """A study's trials (Optuna's trials_dataframe: number, value, params, state), the best spec's path."""

    table: object
    best_spec: Path
    folder: Path

    def _repr_html_(self) -> str:
        return self.table.to_html(index=False)


def tune(spec_path, search: dict | None = None, trials: int = 20, out=None, overrides=None, device: str = "auto",
         threads: int | None = None, seed: int = 0, quiet: bool = False) -> Tune:
    """`specc tune SPEC`: an Optuna study over the spec's search block (or `search`, {key: range text
    such as 'int(10, 100)'}), each trial a run under `out` (default runs/<spec name>-tune/); a Tune."""
    import contextlib
    import io

    from specc.api.spec import override_list
    from specc.commands.tune import tune_command

    if not isinstance(spec_path, (str, Path)) or not Path(spec_path).is_file():
        raise UsageError(f"tune: expected a spec file's path (best.spec is written beside its trials), found "
                         f"{spec_path!r}")
    import argparse

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"trials: expected a whole number of at least 1, found {trials!r}")
    # the Namespace `specc tune`'s parser makes, with its defaults (specc.commands.cli._tune_options)
    args = argparse.Namespace(spec=Path(spec_path), sets=override_list(overrides), trials=trials,
                              search=[f"{k}={v}" for k, v in (search or {}).items()],
                              out=None if out is None else folder_path(out, "out"), storage=None, study=None,
                              timeout=None,
                              seed=seed, repeats=1, startup_trials=5, warmup_epochs=1, no_prune=False, device=device,
                              threads=checked_threads(threads))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed) if quiet else contextlib.nullcontext():
        code = tune_command(args)
    if code != 0:
        raise UsageError(f"specc tune ended with exit code {code}")
    import optuna

    from specc.api.spec import load

    name = load(spec_path, overrides).name
    folder = folder_path(out, "out", Path("runs") / f"{name}-tune")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")
    return Tune(study.trials_dataframe(), folder / "best.spec", folder)
