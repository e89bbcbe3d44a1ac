"""`specc tune`: a spec and its search space -> an Optuna study (TPE; median pruning, trials compared at the
same fraction of their schedules), each trial a run folder, the best trials' table and best.spec."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import sys
from pathlib import Path

from specc.commands import tune_storage as storage
from specc.data.splits import validates
from specc.language import ast, overrides
from specc.language.check.search_block import BLOCK as SEARCH
from specc.language.diagnostics import SpecError, UsageError, first_line
from specc.language.parse import parse, parse_expr, read_source
from specc.language.source import Source, Span
from specc.language.spec import SearchRange, Spec
from specc.training.losses import higher_is_better

SEARCH_PATH = "--search"
_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*=")
SHOWN = 10  # rows of the table of best trials
SCHEDULE_STEPS = 1_000_000  # a trial reports at millionths of its schedule (schedule_step)
SEEDS = 2**31  # train.seed is below this: a repeat's seed wraps around to 0


def tune_command(args) -> int:
    """specc tune SPEC: run the study (resuming it where its storage has one), print the best trials,
    write <out>/best.spec."""
    try:
        import optuna
    except ImportError:
        raise UsageError("specc tune needs optuna: pip install 'specc[tune]'") from None
    spec = _load(args)
    if spec is None:
        return 2
    if not spec.search:
        raise UsageError(f"{args.spec}: nothing to search: add a search {{ }} block to the spec or give "
                         "--search KEY=RANGE, e.g. --search 'n_factors=int(10, 100)'")
    if not validates(spec.data.valid):
        raise UsageError(f"{args.spec}: valid = none keeps no validation rows, so there is nothing to compare "
                         "trials by: tune with a split (--set 'data.valid=random(0.2)'), then train the best spec "
                         "with valid = none")
    out = args.out or Path("runs") / f"{spec.name}-tune"
    monitor, direction = monitored(spec)
    # specc prints a line per trial, failed ones too: Optuna's own warning would add a traceback to it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study, where = _study(args, spec, out, direction)
    done = _finished(study)
    todo = args.trials - len(done)
    print(f"specc: tuning {spec.name}: {len(spec.search)} keys, {monitor} ({direction}), study '{study.study_name}' "
          f"in {where}; {len(done)} trial{'s' * (len(done) != 1)} done, {max(todo, 0)} to go", flush=True)
    if todo > 0:
        from specc.training.loop import Interrupted

        try:
            _optimize(study, args, spec.search, out, monitor, todo)
        except (Interrupted, KeyboardInterrupt):
            print("\nspecc: interrupted; the study keeps its finished trials: the same command goes on with it",
                  file=sys.stderr)
            return 130
    rows = _finished(study, complete=True)
    if not rows:
        print("specc: no trial has completed yet, so there is no best spec to write", file=sys.stderr)
        return 1
    print_table(rows, spec, monitor, direction)
    best = rows[0]
    path = write_best(args.spec, best.user_attrs["sets"], out)
    print(f"\nbest first; the trials are in {storage.named(out)}/; the best (trial {best.number}, {monitor} "
          f"{best.value:.6f}) is written out as {storage.named(path)}")
    return 0


# ---------------------------------------------------------------- the spec and its search space


def search_entry(text: str) -> ast.Assign | ast.KeyAssign:
    """One --search KEY=RANGE as the line of a search block it stands for (spans in a --search source)."""
    source = Source(SEARCH_PATH, text)
    match = _KEY.match(text)
    if not match:
        raise UsageError(f"--search {text!r}: expected KEY=RANGE with a key as --set takes it, e.g. "
                         "--search 'n_factors=int(10, 100)' or --search 'train.fit.lr=log(1e-4, 1e-1)'")
    try:
        value = parse_expr(source, match.end())
    except SpecError as err:
        raise UsageError(f"--search {text!r}: {err.diagnostics[0].message}") from None
    parts, start = [], match.start(1)
    for name in match.group(1).split("."):
        parts.append(ast.Name(name, Span(source, start, start + len(name))))
        start += len(name) + 1
    key_span = Span(source, match.start(1), match.end(1))
    if len(parts) == 1:
        return ast.Assign(parts[0], value, key_span.to(value.span))
    return ast.KeyAssign(ast.Key(tuple(parts), key_span), value, key_span.to(value.span))


def with_search(tree: ast.SpecFile, entries: list) -> ast.SpecFile:
    """The spec's syntax tree with --search lines in its search block, each replacing the block's line
    for the same key (a key given twice on the command line is reported as the block reports it)."""
    import dataclasses

    if not entries:
        return tree
    blocks = list(tree.blocks)
    at = next((k for k, b in enumerate(blocks) if b.name.id == SEARCH), None)
    if at is None:
        span = entries[0].span
        blocks.append(ast.Block(ast.Name(SEARCH, span), (), span))
        at = len(blocks) - 1
    given = {e.target.id for e in entries}
    body = tuple(s for s in blocks[at].body if getattr(getattr(s, "target", None), "id", None) not in given)
    blocks[at] = dataclasses.replace(blocks[at], body=body + tuple(entries))
    return dataclasses.replace(tree, blocks=tuple(blocks))


def _load(args) -> Spec | None:
    """The checked spec with its --set values and the --search ranges; None when only --search
    strings are wrong (printed: a usage error)."""
    from specc.language.check import check

    source = read_source(args.spec)
    tree, set_errors = overrides.apply(parse(source), list(args.sets))
    tree = with_search(tree, [search_entry(text) for text in args.search])
    base_dirs = {source.path: Path(source.path).resolve().parent, overrides.OVERRIDE_PATH: Path.cwd()}
    try:
        spec, warnings = check(tree, base_dirs)
    except SpecError as err:
        found = list(err.diagnostics) + set_errors
        if all(d.span is not None and d.span.source.path == SEARCH_PATH for d in found):
            print("\n".join(d.render() for d in found), file=sys.stderr)  # a mistake of the command line's
            return None
        raise SpecError(found) from None
    if set_errors:
        raise SpecError(set_errors)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    return spec


def monitored(spec: Spec) -> tuple[str, str]:
    """What a trial is judged and pruned on: the early_stop monitor of the spec's last stage that has
    one (what the spec says it cares about), else valid_loss; and the direction that is better."""
    monitor = next((s.early_stop.monitor for s in reversed(spec.train.stages) if s.early_stop is not None),
                   "valid_loss")
    return monitor, "maximize" if higher_is_better(monitor) else "minimize"


def trial_sets(sets: list[str], values: dict[str, object]) -> list[str]:
    """A trial's --set strings: the command line's, then one per searched key."""
    return list(sets) + [f"{key}={_literal(value)}" for key, value in values.items()]


def _literal(value) -> str:
    if isinstance(value, str):  # a choice, as the spec wrote it
        return value
    return str(value) if isinstance(value, int) else repr(float(value))


def suggest(trial, r: SearchRange):
    """The trial's value for one range (a choice as its spec text)."""
    if r.kind == "int":
        return trial.suggest_int(r.key, r.low, r.high, step=r.step or 1)
    if r.kind == "choice":
        return trial.suggest_categorical(r.key, list(r.choices))
    value = trial.suggest_float(r.key, r.low, r.high, log=r.kind == "log")
    # four significant figures are as many as a hyperparameter needs, and keep best.spec readable
    return min(max(float(f"{value:.4g}"), r.low), r.high)


def spec_values(args, search: tuple[SearchRange, ...]) -> dict[str, object]:
    """The spec's own values (with its --set values) of the searched keys, where they are numbers
    within their range or one of their choices, found by the overrides machinery: the node that
    `--set key=...` would replace holds the value."""
    tree = overrides.apply(parse(read_source(args.spec)), list(args.sets))[0]
    found = {}
    for r in search:
        probe = r.choices[0] if r.kind == "choice" else _literal(r.low)
        new, errors = overrides.apply(tree, [f"{r.key}={probe}"])
        edits: list = []
        if not errors:
            _diff(tree, new, edits)
        if len(edits) != 1 or edits[0][0] == edits[0][1]:
            continue  # the spec leaves the key at its default, or --set rebuilt the call around it
        text = tree.source.text[edits[0][0]:edits[0][1]]
        if r.kind == "choice":
            if text in r.choices:
                found[r.key] = text
            continue
        try:
            value = float(text)
        except ValueError:
            continue  # an expression, or a param's name: left to the sampler
        if r.low <= value <= r.high and (r.kind != "int" or (value.is_integer() and
                                                             (value - r.low) % (r.step or 1) == 0)):
            found[r.key] = int(value) if r.kind == "int" else value
    return found


# ---------------------------------------------------------------- the study


def _fingerprint(args) -> str:
    """What a study is of: the spec's text and the --set values (its ranges may change between runs)."""
    text = Path(args.spec).read_text(encoding="utf-8", errors="replace")
    return hashlib.sha256(json.dumps([text, list(args.sets)]).encode()).hexdigest()[:16]


def _study(args, spec: Spec, out: Path, direction: str):
    """The study, created or loaded to resume (the same spec, --set values and --repeats only), and how
    to name its storage. Under a lock on a SQLite file's folder: processes starting one new study share it."""
    import optuna
    import sqlalchemy.exc

    url = storage.storage_url(args.storage, out)
    database = storage.sqlite_file(url)
    where = f"--storage {storage.shown(url)}" if args.storage else storage.named(out / storage.DEFAULT)
    storage.check_out(out)
    if args.storage is None:
        storage.make_out(out)  # the study's file goes into it; else --out waits until the storage has opened
    if database is not None:  # before waiting for the lock: a file that cannot be a study is refused at once
        storage.check_sqlite(database, where, creating=True)
    name = args.study or spec.name
    with storage.creation_lock(database) as locked:
        if database is not None and locked:  # no other process is creating the tables now
            storage.check_sqlite(database, where)
        opened = storage.open_storage(url, database is not None, locked, where)
        storage.make_out(out)
        try:
            study = optuna.create_study(storage=opened, study_name=name, direction=direction, pruner=make_pruner(args),
                                        load_if_exists=True)
        except (ValueError, sqlalchemy.exc.SQLAlchemyError) as err:
            raise UsageError(f"{where}: {first_line(err)}") from None
        _same_study(study, args, spec, where, direction)
        trials = len(study.trials)
        joined = study.user_attrs.get("specc.processes", 0)
        study.set_user_attr("specc.processes", joined + 1)
        if not trials:
            # the first trial is the spec as written: the baseline in the table, and a study that
            # can only find values at least as good as the spec's own
            baseline = spec_values(args, spec.search)
            if baseline:
                study.enqueue_trial(baseline, user_attrs={"specc.baseline": True}, skip_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(args.seed, trials, joined))
    return study, where


def _same_study(study, args, spec: Spec, where: str, direction: str) -> None:
    """Refuse to go on with a study of another direction, spec, --set values or --repeats; mark a new one."""
    name = study.study_name
    if study.direction.name.lower() != direction:
        raise UsageError(f"study '{name}' in {where} is a study to {study.direction.name.lower()} and this one "
                         f"would {direction}: choose another --study")
    mine = _fingerprint(args)
    theirs = study.user_attrs.get("specc.fingerprint")
    if theirs is None:
        study.set_user_attr("specc.fingerprint", mine)
        study.set_user_attr("specc.spec", spec.name)
        study.set_user_attr("specc.repeats", args.repeats)
    elif theirs != mine:
        raise UsageError(f"study '{name}' in {where} was started from another spec or other --set values: resume it "
                         "with the same ones, or choose another --study or --out")
    repeats = study.user_attrs.get("specc.repeats", 1)  # a study of an older specc: one seed a trial
    if repeats != args.repeats:
        raise UsageError(f"study '{name}' in {where} judges a trial by the mean of {repeats} seed"
                         f"{'s' * (repeats != 1)}, and --repeats {args.repeats} would mix other means into it: give "
                         f"--repeats {repeats}, or choose another --study or --out")


def sampler_seed(seed: int, trials: int, joined: int) -> int:
    """The TPE sampler's seed: --seed, mixed with how far the study has got and how many processes have
    joined it, so that neither a resumed study nor a second process draws the same values again."""
    digest = hashlib.sha256(f"{seed} {trials} {joined}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # numpy's seeds are below 2**32


def make_pruner(args):
    """Median pruning (Optuna's), on the steps schedule_step gives; none with --no-prune. A trial's
    first --warmup-epochs are left alone by report_epoch."""
    import optuna

    if args.no_prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials, n_warmup_steps=0)


def schedule_step(done: int, total: int) -> int:
    """The step a trial reports after `done` of its `total` epochs: how far through its schedule it is,
    in millionths. The median pruner compares trials at equal steps, so a 30-epoch trial's tenth
    epoch meets a 3-epoch trial's first (both a third of a one-cycle schedule), never its third."""
    return round(done * SCHEDULE_STEPS / total)


def report_epoch(trial, value: float, done: int, total: int, warmup: int) -> bool:
    """Report a trial's figure after `done` of its `total` epochs; whether the pruner stops it now
    (never in its first `warmup` epochs, nor after its last, when stopping would save nothing)."""
    trial.report(value, schedule_step(done, total))
    return warmup < done < total and bool(trial.should_prune())


def _finished(study, complete: bool = False) -> list:
    """The study's finished trials (complete ones only, with `complete`), best first."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE,) if complete else (TrialState.COMPLETE, TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=states)
    if complete:
        sign = -1 if study.direction.name == "MAXIMIZE" else 1
        trials = sorted(trials, key=lambda t: (sign * t.value, t.number))
    return trials


def _optimize(study, args, search: tuple[SearchRange, ...], out: Path, monitor: str, todo: int) -> None:
    """Run trials until the study has --trials finished ones (counted over every process sharing it)."""
    import optuna
    from optuna.trial import TrialState

    from specc.export import ExportError
    from specc.training.steps import TrainingDiverged

    def objective(trial):
        return run_trial(trial, args, search, out, monitor)

    def said(study, trial) -> None:
        values = ", ".join(f"{k}={v}" for k, v in trial.user_attrs.get("values", {}).items())
        if trial.user_attrs.get("specc.baseline"):
            values += " (the spec's own values)"
        if trial.state == TrialState.COMPLETE:
            best = study.best_trial.number == trial.number
            what = f"{monitor} {trial.value:.6f}" + (" (best so far)" if best else "")
        elif trial.state == TrialState.PRUNED:
            what = f"pruned after epoch {trial.user_attrs.get('epoch')} ({monitor} {trial.user_attrs.get('last'):.6f})"
        else:
            what = f"failed: {trial.user_attrs.get('error', 'see its run folder')}"
        print(f"trial {trial.number:>4}  {values}: {what}", flush=True)

    stop = optuna.study.MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(objective, n_trials=todo, timeout=args.timeout, catch=(TrainingDiverged, ExportError),
                   callbacks=[stop, said], gc_after_trial=False)


def seed_folder(out: Path, number: int, k: int, seed: int) -> Path:
    """The run folder of a trial's k-th seed: trial-NNNN for the spec's own, trial-NNNN-seed-S for the others."""
    return out / (f"trial-{number:04d}" if k == 0 else f"trial-{number:04d}-seed-{seed}")


def run_trial(trial, args, search: tuple[SearchRange, ...], out: Path, monitor: str) -> float:
    """One trial: its values as --set strings, trained with --repeats seeds (the spec's train.seed, then
    that plus 1, 2, ...), each into its own run folder; its value the mean of their figures. The first
    seed's run reports every epoch, and is stopped (marked `pruned`) when the pruner says so."""
    import optuna

    from specc.training.metrics import monitored as value_of
    from specc.training.run import load_spec

    values = {r.key: suggest(trial, r) for r in search}
    sets = trial_sets(args.sets, values)
    trial.set_user_attr("sets", sets)
    trial.set_user_attr("values", {key: _literal(value) for key, value in values.items()})
    trial.set_user_attr("run", str(seed_folder(out, trial.number, 0, 0)))
    spec, _ = load_spec(args.spec, sets)
    total = sum(stage.fit.epochs for stage in spec.train.stages)
    done = 0

    def on_record(record) -> None:
        nonlocal done
        value = value_of(record, monitor)
        done += 1
        if report_epoch(trial, value, done, total, args.warmup_epochs):
            trial.set_user_attr("epoch", record.epoch)
            trial.set_user_attr("last", value)
            pruned = optuna.TrialPruned(f"pruned by specc tune after epoch {record.epoch} ({done} of {total}): "
                                        f"{monitor} {value:.6f} is worse than the median of the completed trials "
                                        "at this point of their schedules")
            pruned.run_status = "pruned"  # how specc.training.run.train_run marks the run folder
            raise pruned

    records = []
    for k in range(args.repeats):
        seed = (spec.train.seed + k) % SEEDS
        run_sets = sets if k == 0 else sets + [f"train.seed={seed}"]
        run_spec = spec if k == 0 else load_spec(args.spec, run_sets)[0]
        records.append(_train_seed(trial, run_spec, seed_folder(out, trial.number, k, seed), run_sets, args,
                                   on_record if k == 0 else None))
    figures = [value_of(r, monitor) for r in records]
    trial.set_user_attr("figures", figures)
    trial.set_user_attr("valid_loss", statistics.fmean(r.valid_loss for r in records))
    trial.set_user_attr("metrics", {m: statistics.fmean(r.metrics[m] for r in records) for m in records[0].metrics})
    return statistics.fmean(figures)


def _train_seed(trial, spec: Spec, folder: Path, sets: list[str], args, on_record):
    """Train one of a trial's runs; its last epoch's record (a failure's first line kept on the trial)."""
    import optuna

    from specc.training.listeners import AfterEpoch
    from specc.training.options import RunOptions
    from specc.training.run import train_run

    try:
        result = train_run(spec, folder, RunOptions(args.device, sets, quiet=True, threads=args.threads),
                           listeners=[AfterEpoch(on_record)] if on_record is not None else [])
    except optuna.TrialPruned:
        raise
    except Exception as err:
        trial.set_user_attr("error", first_line(err))
        raise
    return result.history.records[-1]


# ---------------------------------------------------------------- the results


def print_table(rows: list, spec: Spec, monitor: str, direction: str) -> None:
    """The best trials as `specc sweep` prints its runs: best first, the final figures, then the values."""
    metrics = list(spec.train.metrics)
    keys = [r.key for r in spec.search]
    shown = rows[:SHOWN]
    table = [["trial", "valid_loss", *metrics, *keys]]
    for t in shown:
        figures = t.user_attrs.get("metrics", {})
        table.append([f"{t.number}", f"{t.user_attrs.get('valid_loss', float('nan')):.6f}",
                      *(f"{figures.get(m, float('nan')):.6f}" for m in metrics),
                      *(t.user_attrs.get("values", {}).get(k, "-") for k in keys)])
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    print()
    for row in table:
        print("  ".join(cell.rjust(w) if 0 < k <= len(metrics) + 1 else cell.ljust(w)
                        for k, (cell, w) in enumerate(zip(row, widths))).rstrip())
    if len(rows) > SHOWN:
        print(f"(the best {SHOWN} of {len(rows)} complete trials; judged on {monitor}, {direction})")


def write_best(spec_path: Path, sets: list[str], out: Path) -> Path:
    """<out>/best.spec: the spec's text with the best trial's values written in (and relative paths
    made relative to <out>, where the file goes), checked to be the very syntax tree `--set` gives."""
    from specc.training.runfolder import atomic_write

    source = read_source(spec_path)
    tree = parse(source)
    # a path in the spec is relative to its folder; one a --set gave, to the working folder
    bases = {source.path: Path(spec_path).resolve().parent, overrides.OVERRIDE_PATH: Path.cwd()}
    moved = _moved_paths(overrides.apply(tree, list(sets))[0], bases, out.resolve())
    text = spec_text(tree, list(sets) + moved[0], moved[1])
    path = out / "best.spec"
    atomic_write(path, text.encode("utf-8"))
    return path


def _moved_paths(tree: ast.SpecFile, bases: dict[str, Path], out: Path) \
        -> tuple[list[str], list[tuple[ast.String, str]]]:
    """--set strings for a relative data path, and new texts for relative `init ... from "RUN"` paths, so
    that they name the same files from `out`. `tree`: the spec with its --set values; `bases`: the folder
    each source's relative paths start from."""
    def moved(node: ast.String) -> str | None:
        base = bases[node.span.source.path]
        if os.path.isabs(node.value) or base == out:
            return None
        return json.dumps(os.path.relpath(base / node.value, out))

    def source_path(body) -> ast.String | None:
        """The path string of the `source = kind(path, ...)` among `body`'s statements, if it has one."""
        for stmt in body:
            if isinstance(stmt, ast.Assign) and stmt.target.id == "source" and isinstance(stmt.value, ast.Call):
                path = next((a for a in stmt.value.args[:1]), None)
                path = next((k.value for k in stmt.value.keywords if k.name.id == "path"), path)
                return path if isinstance(path, ast.String) else None
        return None

    sets = []
    for block in tree.blocks:
        if block.name.id != "data":
            continue
        # the data's own source, and each side table's (data.TABLE.source.path)
        owners = [("data.source", block.body)] + [(f"data.{s.name.id}.source", s.body) for s in block.body
                                                   if isinstance(s, ast.Section) and s.kind.id == "table"]
        for key, body in owners:
            path = source_path(body)
            if path is not None and moved(path):
                sets.append(f"{key}.path={moved(path)}")
    inits = [(c.args[2], moved(c.args[2])) for c in tree.commands if c.name.id == "init" and len(c.args) == 3
             and isinstance(c.args[2], ast.String) and moved(c.args[2])]
    return sets, inits


def spec_text(tree: ast.SpecFile, sets: list[str], replaced: list[tuple[ast.String, str]] = ()) -> str:
    """The spec's text with `--set` values written into it (and some strings replaced): `overrides.apply`
    changes the syntax tree, and each node it changed or added is spliced into the text."""
    new, errors = overrides.apply(tree, sets)
    if errors:
        raise SpecError(errors)
    edits = [(s.span.start, s.span.end, text) for s, text in replaced]
    _diff(tree, new, edits)
    text = tree.source.text
    for start, end, piece in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + piece + text[end:]
    wanted = overrides.apply(parse(Source(tree.source.path, tree.source.text)), sets)[0]
    got = parse(Source(tree.source.path, text))
    if got.blocks != wanted.blocks or (not replaced and got.commands != wanted.commands):
        raise RuntimeError("specc tune: the best spec's text does not parse to the tree --set gives")  # a bug
    return text


def _ours(node) -> bool:
    return getattr(getattr(node, "span", None), "source", None) is not None and \
        node.span.source.path == overrides.OVERRIDE_PATH


def _diff(old, new, edits: list) -> None:
    """Walk two syntax trees that share every node `--set` left alone, collecting text edits."""
    if old is new:
        return
    if _ours(new) and hasattr(old, "span"):
        edits.append((old.span.start, old.span.end, _text(new)))
        return
    if isinstance(old, ast.Name) and isinstance(new, ast.Call):  # `adam` given an argument: adam(wd=0.1)
        edits.append((old.span.start, old.span.end, _text(new)))
        return
    if isinstance(old, ast.Call) and isinstance(new, ast.Call):
        for a, b in zip(old.args, new.args):
            _diff(a, b, edits)
        _diff_keywords(old, new, edits)
        return
    if isinstance(old, (ast.Block, ast.Section)):
        _diff_body(old, new, edits)
        return
    for name in getattr(old, "__dataclass_fields__", ()):
        if name != "span":
            a, b = getattr(old, name), getattr(new, name)
            if isinstance(a, tuple):
                for x, y in zip(a, b):
                    _diff(x, y, edits)
            else:
                _diff(a, b, edits)


def _diff_keywords(old: ast.Call, new: ast.Call, edits: list) -> None:
    """A call's keywords: --set replaces one in its place or adds one after the others."""
    before = {k.name.id: k for k in old.keywords}
    added = []
    for kw in new.keywords:
        if kw.name.id in before:
            _diff(before[kw.name.id].value, kw.value, edits)
        else:
            added.append(f"{kw.name.id}={_text(kw.value)}")
    if added:  # one edit, before the closing parenthesis, in the order --set added them
        end = old.span.end - 1
        sep = ", " if old.args or old.keywords else ""
        edits.append((end, end, sep + ", ".join(added)))


def _diff_body(old, new, edits: list) -> None:
    """A block's lines: --set replaces lines in place or adds one at the end (before the '}')."""
    for a, b in zip(old.body, new.body):
        _diff(a, b, edits)
    added = new.body[len(old.body):]
    if added:  # one edit, before the closing brace, in the order --set added them
        end = old.span.end - 1
        line_start = old.span.source.text.rfind("\n", 0, end) + 1
        alone = not old.span.source.text[line_start:end].strip()  # the brace on a line of its own
        at = line_start if alone else end
        edits.append((at, at, ("" if alone else "\n") + "".join(f"    {_text(stmt)}\n" for stmt in added)))


def _text(node) -> str:
    """The text of a node --set made: its own text, or for nodes it built, their parts'."""
    if isinstance(node, ast.Assign):
        return f"{node.target.id} = {_text(node.value)}"
    if isinstance(node, ast.CallStmt):
        return _text(node.call)
    if isinstance(node, ast.Call):  # rebuilt: a later --set may have added a keyword to an earlier one's call
        parts = [_text(a) for a in node.args] + [f"{k.name.id}={_text(k.value)}" for k in node.keywords]
        return f"{node.func.id}({', '.join(parts)})"
    return node.span.text
