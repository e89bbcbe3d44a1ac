"""The command line: check | show | train | predict | inspect.

Exit codes: 0 success, 1 a spec or data error (diagnostics on stderr), 2 a usage error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specc.language.diagnostics import DataError, SpecError, UsageError, printable


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors; keep its message short
        self.print_usage(sys.stderr)
        print(f"specc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _threads(text: str) -> int:
    """--threads N: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads of at least 1, found '{text}'")
    if n > 4096:  # torch takes a C int; no machine has more cores
        raise argparse.ArgumentTypeError(f"expected a whole number of threads of at most 4,096, found '{text}'")
    return n


THREADS_HELP = ("torch's threads (default: 1 for a small model, under 2**26 multiply-adds a step, as every example "
                "is; else torch's default, one per core)")
MLFLOW_HELP = ("also log the run to MLflow at this tracking URI (a server's http(s):// address, or a database such "
               "as sqlite:///mlflow.db); needs pip install 'specc[mlflow]'")


def version() -> str:
    """specc's version: the installed package's, or specc.__version__ from a source tree."""
    from importlib import metadata

    try:
        return metadata.version("specc")
    except metadata.PackageNotFoundError:
        from specc import __version__

        return __version__


class _Version(argparse.Action):
    """--version: looks the version up only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print specc's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"specc {version()}")
        raise SystemExit(0)


def _whole(low: int, high: int):
    """An argparse type: a whole number from low to high."""
    def whole(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or not low <= n <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high:,}, found '{text}'")
        return n
    return whole


def _seconds(text: str) -> float:
    """--timeout S: a number of seconds above 0 and at most 1e9 (not inf, not nan)."""
    try:
        s = float(text)
    except ValueError:
        s = float("nan")
    if not 0 < s <= 1e9:  # false for nan too
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0 and at most 1e9, found '{text}'")
    return s


def _tune_options(c) -> None:
    """specc tune's options (beside SPEC and --set): kept out of _parser, which would pass 100 lines."""
    c.add_argument("--search", action="append", default=[], metavar="KEY=RANGE",
                   help="a value to search, as in a search block: n_factors=int(10, 100), "
                   "train.fit.lr=log(1e-4, 1e-1), train.optimizer.wd=float(0, 0.3), data.batch=choice(32, 64) "
                   "(repeatable; replaces the block's line for the same key)")
    c.add_argument("--trials", type=_whole(1, 10**6), default=20, metavar="N",
                   help="finish when the study has N finished trials, counting those it had (default 20)")
    c.add_argument("--out", type=Path, help="where the trials and study.db go (default runs/<spec name>-tune)")
    c.add_argument("--storage", metavar="URL", help="the study's database, any URL optuna takes, to share one study "
                   "among processes or machines (default sqlite:///<out>/study.db)")
    c.add_argument("--study", metavar="NAME", help="the study's name in the storage (default: the spec's name)")
    c.add_argument("--timeout", type=_seconds, metavar="S", help="start no trial after S seconds")
    c.add_argument("--seed", type=_whole(0, 2**32 - 1), default=0, help="the TPE sampler's seed (default 0)")
    c.add_argument("--repeats", type=_whole(1, 100), default=1, metavar="N",
                   help="train each trial with N seeds (the spec's train.seed, then +1, +2, ...) and judge it by the "
                   "mean of their figures (default 1)")
    c.add_argument("--startup-trials", type=_whole(0, 10**6), default=5, metavar="N",
                   help="prune nothing until N trials have completed (default 5)")
    c.add_argument("--warmup-epochs", type=_whole(0, 10**6), default=1, metavar="N",
                   help="prune no trial in its first N epochs (default 1)")
    c.add_argument("--no-prune", action="store_true", help="let every trial finish (no median pruning)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP)


def _spec_command(sub, name: str, help_text: str):
    """A command that reads a spec: SPEC and --set."""
    c = sub.add_parser(name, help=help_text, description=help_text)
    c.add_argument("spec", type=Path, help="the .spec file")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. data.batch=128 (repeatable)")
    return c


def _spec_commands(sub) -> None:
    """The commands that read a spec: check, show, train, lr-find, sweep, tune."""
    c = _spec_command(sub, "check", "check a spec (and its data) and print a model summary")
    c.add_argument("--no-data", action="store_true", help="check the spec alone, without reading its data")
    c = _spec_command(sub, "show", "print a compiler stage: the syntax tree, the generated code, the plan, the data")
    c.add_argument("--stage", choices=("ast", "code", "plan", "data"), default="code")
    c.add_argument("--png", type=Path, help="--stage data / plan: write the picture (image samples, the "
                   "schedule) to this file; without it, show prints text and writes nothing")
    _train_arguments(_spec_command(sub, "train", "train a spec and write its run folder"))
    _lr_find_arguments(_spec_command(sub, "lr-find", "the learning-rate finder: an exponential sweep, a plot and "
                                     "suggestions"))
    _sweep_arguments(_spec_command(sub, "sweep", "train every combination of --grid values, each in its own run "
                                   "folder"))
    _tune_options(_spec_command(sub, "tune", "hyperparameter search with Optuna, each trial its own run "
                                "(pip install 'specc[tune]')"))


def _train_arguments(c) -> None:
    """specc train's options (beside SPEC and --set)."""
    c.add_argument("--out", type=Path, help="run folder (default runs/<spec name>)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    c.add_argument("--device-step", action="store_true",
                   help="take each step with the device-resident step, uncaptured (Adam; for checks on the CPU)")
    c.add_argument("--no-graph", action="store_true",
                   help="on a CUDA device, train with the plain loop instead of the CUDA-graph step")
    c.add_argument("--resume", type=Path, metavar="RUN",
                   help="go on from where the run in RUN stopped (Ctrl-C or a crash); writes into RUN")
    c.add_argument("--force", action="store_true",
                   help="replace the run already in the folder (files specc did not write are left alone)")
    c.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP)
    c.add_argument("--mlflow", metavar="URI", help=MLFLOW_HELP)


def _lr_find_arguments(c) -> None:
    """specc lr-find's options (beside SPEC and --set)."""
    c.add_argument("--out", type=Path, help="where lr_find.csv and lr_find.png go (default runs/<spec name>)")
    c.add_argument("--force", action="store_true",
                   help="write them even beside files specc did not write or a run of another spec")
    c.add_argument("--start", type=float, default=1e-7)
    c.add_argument("--end", type=float, default=10.0)
    c.add_argument("--steps", type=int, default=100)
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP)


def _sweep_arguments(c) -> None:
    """specc sweep's options (beside SPEC and --set)."""
    c.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="a spec value and the values to try, e.g. n_factors=10,40,80 or data.batch=32,64 (repeatable)")
    c.add_argument("--out", type=Path, help="where the runs go (default runs/<spec name>-sweep)")
    c.add_argument("--force", action="store_true", help="replace the runs of an earlier sweep into the same folder")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP)
    c.add_argument("--mlflow", metavar="URI", help=MLFLOW_HELP)


def _reading_options(c) -> None:
    """How predict and evaluate read a CSV or an .npz."""
    c.add_argument("--delimiter", metavar="CHAR", help="a CSV's delimiter (default: the training data's, or the "
                   "first of , tab ; | that splits the header into the model's columns); 'tab' or '\\t' for tab")
    c.add_argument("--array", dest="arrays", action="append", default=[], metavar="COLUMN=NAME",
                   help="an .npz's array for a column of the model (repeatable; default: the array named as the "
                   "column, else <column>_test, else <column>_valid, the same for every column)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="specc", description="Compile a model spec into a trained, exported model.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _spec_commands(sub)
    c = sub.add_parser("predict", help="predict with an exported model.onnx through onnxruntime")
    c.add_argument("model", type=Path)
    c.add_argument("rows", type=Path, help="a CSV with a header naming the model's input columns (or laid out as "
                   "the training data was), or an .npz with an array per input; for a model trained on an image "
                   "folder, an image file or a folder (every image in it and below it, decoded as training did)")
    c.add_argument("--out", type=Path, help="write predictions here (default stdout)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _reading_options(c)
    c = sub.add_parser("evaluate", help="the spec's metrics of an exported model on a labelled file")
    c.add_argument("model", type=Path)
    c.add_argument("data", type=Path, help="a labelled CSV (read as the spec read its data, or with a header "
                   "naming the model's columns), or an .npz with an array per column; for a model trained on an "
                   "image folder, a folder with one subfolder of images per class (or train/ and valid/ of them)")
    c.add_argument("--split", choices=("all", "train", "valid"), default="all",
                   help="all rows, or the spec's training or validation rows (default all); for an .npz, "
                   "<column>_train / <column>_valid arrays where it has them")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _reading_options(c)
    c = sub.add_parser("inspect", help="learned biases and principal components of a run's embeddings")
    c.add_argument("run", type=Path, help="a run folder of `specc train`")
    c.add_argument("--column", help="which id column's embeddings (default: the last one)")
    c.add_argument("--names", type=Path, help="a text file mapping ids to names: the id in the first field "
                   "(or the one its header names as --column), the name in the next")
    c.add_argument("--names-delimiter", metavar="CHAR",
                   help="the names file's delimiter (default: the first line's most frequent of , tab ; |)")
    c.add_argument("--names-encoding", default="utf-8", metavar="ENCODING",
                   help="the names file's encoding (default utf-8; MovieLens' u.item is latin-1)")
    c.add_argument("--names-header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the names file's first line is a header (default: it is, unless it starts "
                   "with one of the model's ids)")
    c.add_argument("--top", type=int, default=1000, help="only the N most frequent ids (default 1000)")
    c.add_argument("--show", type=int, default=10, help="rows shown at each end (default 10)")
    c = sub.add_parser("recommend", help="each user's top k items from an exported recommender (target = implicit(...))")
    c.add_argument("model", type=Path)
    c.add_argument("--user", action="append", default=[], metavar="ID", help="a user id (repeatable)")
    c.add_argument("--users", type=Path, metavar="FILE", help="a file of user ids: one a line, or a CSV whose header "
                   "names the model's user column")
    c.add_argument("--out", type=Path, help="write the CSV user,rank,item,score here (default stdout)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c = sub.add_parser("serve", help="an HTTP endpoint around an exported model.onnx (pip install 'specc[serve]')")
    _serve_arguments(c)
    return p


def _load(args, warn: bool = True):
    """The spec that a command's SPEC and --set values give, its warnings printed to stderr
    (unless not `warn`: a rank other than 0 of a data-parallel run)."""
    from specc.training.run import load_spec

    spec, warnings = load_spec(args.spec, args.sets)
    for w in warnings if warn else ():
        print(w.render(), file=sys.stderr)
    return spec


def _check(args) -> int:
    from specc.api.spec import check

    report = check(args.spec, args.sets, data=not args.no_data)  # the API's Report, the same text
    for d in report.diagnostics if report.ok or report.data_error is not None else ():
        print(d.render(), file=sys.stderr)  # the warnings, before the summary
    if report.data_error is not None:
        raise report.data_error
    if not report.ok:
        raise SpecError(report.diagnostics)
    print(report.summary)
    return 0


def _show(args) -> int:
    if args.stage == "ast":
        from specc.language import ast, overrides
        from specc.language.parse import parse, read_source

        tree, errors = overrides.apply(parse(read_source(args.spec)), args.sets)
        if errors:
            raise SpecError(errors)
        print(ast.dump(tree))
        return 0
    from specc.api.spec import Spec, stage_text
    from specc.training.runfolder import atomic_write

    checked = _load(args)
    text, png = stage_text(Spec(checked, tuple(args.sets), (), args.spec, checked.name), args.stage, png=args.png)
    # pictures go only where the user says: specc writes nothing else outside a run folder
    if args.stage == "data":
        if png is not None and args.png is not None:
            atomic_write(args.png, png)
        print(text)
    else:
        print(text)
        if args.png is not None:
            atomic_write(args.png, png)
            print(f"the learning rate and momentum of every group at every step: {args.png}")
        else:
            print("(--png FILE draws the learning rate and momentum of every group at every step)")
    return 0


def _train_options(args, spec) -> Path:
    """The folder `specc train` writes, once its options are checked (UsageError); torch is
    imported only for the options that need it (--device cuda). Which options combine with the
    spec's optimizer is its declaration's to say (specc.training.optimizers): asked here for
    --device-step, and in _train_launched for data-parallel training."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here")
    if args.device_step:
        from specc.training.optimizers import device_step_refusal

        if device_step_refusal(spec.train.optimizer):  # what the optimizer's declaration allows
            raise UsageError(device_step_refusal(spec.train.optimizer))
        if spec.data.augment is not None:
            raise UsageError("--device-step does not augment images: drop it, or augment from the spec")
    if args.resume and args.out and args.out != args.resume:
        raise UsageError("--resume RUN writes into RUN; leave out --out")
    if args.resume and args.force:
        raise UsageError("--resume goes on with the run in RUN and --force replaces it: give one of them")
    return args.resume or args.out or Path("runs") / spec.name


def _train_early(args):
    """One process (no launcher): (spec, folder, data), after every refusal that needs no torch,
    before torch is imported: the options, a folder that holds a run, the data and the plan (the
    API's specc.api.run.ready, which specc.train calls too)."""
    from specc.api.run import ready

    spec = _load(args)
    out = _train_options(args, spec)
    return spec, out, ready(spec, out, args.device, args.force, resume=args.resume is not None, sets=args.sets)


def _train(args) -> int:
    import os

    # every refusal that needs no torch is answered before torch is imported (3 s or more); under
    # a launcher, rank 0 answers them in train_run and tells the other ranks
    from specc.training.run import OutOfMemory

    try:
        early = _train_early(args) if "WORLD_SIZE" not in os.environ else None
    except OutOfMemory as err:
        print(err, file=sys.stderr)
        return 1
    from specc.training import distributed
    from specc.training.world import from_env

    world = from_env()  # torchrun's RANK and WORLD_SIZE; one process without them
    spec, out, prepared = early or _train_launched(args, world)
    sets = "".join(f" --set '{s}'" for s in args.sets)
    resume_command = f"specc train {args.spec}{sets} --resume {out}"  # what the messages below suggest
    try:
        world = distributed.start(world, args.device)  # joins the other ranks' process group
        return _train_as(spec, out, _run_options(args, world), resume_command, prepared)
    except distributed.LostRank as err:
        from specc.training.runfolder import CHECKPOINT

        again = ""
        if world.writes and (Path(out) / CHECKPOINT).is_file():
            again = f"; the last epoch's checkpoint is in {out}/: go on with: {resume_command} (under torchrun)"
        print(f"specc: error: {err}{again}", file=sys.stderr)
        return 1
    except distributed.PeerFailed as err:
        print(f"specc: rank {world.rank}: stopping: {err}", file=sys.stderr)
        return 1
    except distributed.Disagreement as err:  # every rank knows it; rank 0 says it, once
        if world.writes:
            print(f"specc: error: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.finish(world)


def _train_launched(args, world):
    """Under a launcher: (spec, folder, None: each rank reads its data in train_run), the options
    checked, and what data-parallel training rules out (rank 0 says it; the others see it too)."""
    from specc.training.run import check_parallel

    spec = _load(args, warn=world.writes)
    out = _train_options(args, spec)
    if world.parallel:
        from specc.training.optimizers import parallel_refusal

        if parallel_refusal(spec.train.optimizer):  # what the optimizer's declaration allows
            raise UsageError(parallel_refusal(spec.train.optimizer))
        check_parallel(spec, world)
    return spec, out, None


def _run_options(args, world):
    """specc train's options as the one value train_run takes (specc.training.options.RunOptions)."""
    from specc.training.options import RunOptions

    return RunOptions(args.device, args.sets, quiet=args.quiet or not world.writes, resume=args.resume is not None,
                      device_step=args.device_step, graph=False if args.no_graph or args.device_step else None,
                      force=args.force, threads=args.threads, world=world, mlflow=args.mlflow)


def _train_as(spec, out: Path, options, resume_command: str, prepared=None) -> int:
    """specc train, as this rank of the run (`options.world`): exit codes and the messages of rank 0
    (the others end with the same codes, silently: rank 0 has said why)."""
    from specc.export import ExportError
    from specc.training.loop import Interrupted
    from specc.training.run import OutOfMemory, train_run
    from specc.training.runfolder import RunFinished, WriteError
    from specc.training.steps import TrainingDiverged

    say = options.world.writes
    try:
        train_run(spec, out, options, prepared=prepared)
    except RunFinished as done:
        # exit 0: what --resume is for, a finished run, is there (a loop that resumes until done stops)
        print(f"specc: {done}", file=sys.stderr)
        return 0
    except WriteError as err:
        import os

        from specc.training.runfolder import inspect_folder

        # the hint only for this command's own run, stopped with a checkpoint to go on from
        run = inspect_folder(Path(out))
        ours = run.resumable and run.status in ("running", "failed") and run.record.get("pid") == os.getpid()
        again = f"; once it can be written, go on with: {resume_command}" if ours else ""
        print(f"specc: error: {err}{again}", file=sys.stderr)
        return 2
    except Interrupted as stopped:
        if not say:
            return 130
        print(f"\nspecc: interrupted in epoch {stopped.state.epoch} before step {stopped.state.step}; the "
              f"checkpoint is in {out}/. Go on with: {resume_command}", file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        if say:
            print(f"specc: training stopped: {err}; the last good checkpoint is in {out}/", file=sys.stderr)
        return 1
    except OutOfMemory as err:  # one line: the spec line, torch's words, what to change
        print(err, file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"specc: export failed: {err}", file=sys.stderr)
        return 1
    return 0


def _lr_find(args) -> int:
    from specc.api.search import find_rates
    from specc.training.lrfind import FLAT_NOTE, shown

    spec = _load(args)
    out = args.out or Path("runs") / spec.name
    result, seconds = find_rates(spec, args.sets, out, args.start, args.end, args.steps, args.device, args.threads,
                                 args.force)
    print(f"lr-find on {spec.name}: {len(result.lrs)} steps from {args.start:g}"
          f"{' (stopped: the loss ran away)' if result.stopped_early else ''} in {seconds:.2f} s")
    for name, lr in result.suggestions.items():
        print(f"  {name:<11} {shown(lr)}")
    if result.flat:
        print(f"  note: {FLAT_NOTE}; a wider range (--start, --end), more --steps or a larger batch may show one")
    print(f"wrote {out}/lr_find.csv and lr_find.png")
    return 0


def _sweep(args) -> int:
    from specc.api.search import interrupted, judged_by, train_grid
    from specc.training.run import load_spec

    axes = []
    for item in args.grid:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in _split_values(values)]
        if not sep or not key.strip() or not all(choices):
            raise UsageError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. n_factors=10,40,80")
        axes.append((key.strip(), choices))
    base_spec, _ = load_spec(args.spec, args.sets)
    out = args.out or Path("runs") / f"{base_spec.name}-sweep"

    def load_variant(extra):
        sets = list(args.sets) + extra
        return sets, load_spec(args.spec, sets)[0]

    def say(line, error=False):
        print(line, file=sys.stderr if error else sys.stdout, flush=True)

    try:
        rows, failed = train_grid(load_variant, axes, out, args.device, args.threads, args.force, args.mlflow, say)
    except interrupted() as stopped:  # (each `except` evaluated only when something is raised)
        print(f"\nspecc: sweep interrupted in {stopped.variant} (epoch {stopped.state.epoch}, step {stopped.state.step}); "
              f"the runs are in {out}/", file=sys.stderr)
        return 130
    judged, metrics = judged_by(rows, base_spec.train.metrics)
    rows.sort(key=lambda r: getattr(r[2], judged))
    width = max([len(r[0]) for r in rows] + [len(name) for name in failed] + [len("variant")])
    print(f"\n{'variant':<{width}}  {judged:>10}  " + "  ".join(f"{m:>10}" for m in metrics))
    for name, _, last, folder in rows:
        print(f"{name:<{width}}  {getattr(last, judged):>10.6f}  " +
              "  ".join(f"{last.metrics[m]:>10.6f}" for m in metrics))
    for name in failed:
        print(f"{name:<{width}}  {'failed':>10}")
    print(f"\nbest first; the runs are in {out}/")
    return 1 if failed else 0


def _split_values(text: str) -> list[str]:
    """Split V1,V2,... at the commas outside brackets and quotes: (0.9, 0.99),(0.9, 0.999) is two."""
    parts, depth, quote, current = [], 0, False, ""
    for ch in text:
        if ch == '"':
            quote = not quote
        elif not quote and ch in "([":
            depth += 1
        elif not quote and ch in ")]":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _model_path(model: Path) -> None:
    import os

    if not os.path.lexists(model):  # a link that leads nowhere (or in a loop) is reported by the reader
        raise UsageError(f"{model}: no such model file")


def _delimiter(text: str | None, option: str = "--delimiter") -> str | None:
    """--delimiter: one character; 'tab' or a typed backslash-t for a tab."""
    if text is None:
        return None
    text = {"tab": "\t", "\\t": "\t"}.get(text, text)
    if len(text) != 1 or text in "\"\r\n":
        raise UsageError(f"{option} {text!r}: expected one character, e.g. ';' or tab")
    return text


def _arrays(items: list[str]) -> dict[str, str]:
    """--array COLUMN=NAME (repeatable) as {column: array name}."""
    arrays = {}
    for item in items:
        column, sep, name = item.partition("=")
        if not sep or not column.strip() or not name.strip():
            raise UsageError(f"--array {item!r}: expected COLUMN=NAME, e.g. x=x_test")
        if column.strip() in arrays:
            raise UsageError(f"--array: column {column.strip()!r} given twice")
        arrays[column.strip()] = name.strip()
    return arrays


def _out_path(out: Path, *inputs: Path) -> None:
    """--out must be a file in a folder that is there, and none of the files being read."""
    import os

    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name, e.g. {out / 'predictions.csv'}")
    folder = out.parent
    if not folder.is_dir():
        what = "does not exist" if not os.path.lexists(folder) else "is not a folder"
        raise UsageError(f"--out {out}: the folder {folder} {what}")
    if os.path.lexists(out) and not out.is_file():
        raise UsageError(f"--out {out}: is not a regular file")
    for path in inputs:
        if out.exists() and path.exists() and os.path.samefile(out, path):
            raise UsageError(f"--out {out}: is the file being read; the predictions would replace it")


def _predict(args) -> int:
    from specc.inference.infer import predict_file

    _model_path(args.model)
    delimiter, arrays = _delimiter(args.delimiter), _arrays(args.arrays)
    _written(args.out, (args.model, args.rows),
             lambda out: predict_file(args.model, args.rows, out, device=args.device, delimiter=delimiter, arrays=arrays))
    return 0


def _written(out: Path | None, reads: tuple, write) -> None:
    """`write(file)` to stdout, or (--out) to a buffer written to `out` in one piece, once it is whole."""
    if out is None:
        write(sys.stdout)
        return
    import io

    from specc.training.runfolder import atomic_write

    _out_path(out, *reads)
    buf = io.StringIO()
    write(buf)
    try:
        atomic_write(out, buf.getvalue().encode("utf-8"))
    except OSError as err:
        raise UsageError(f"--out {out}: cannot be written: {(err.strerror or str(err)).lower()}") from None


def _recommend(args) -> int:
    from specc.inference.recommend import read_users, recommend_rows, recommender
    from specc.inference.session import load_session

    _model_path(args.model)
    if bool(args.user) == bool(args.users):
        raise UsageError("give the users with --user ID (repeatable) or --users FILE, one of the two")
    session = load_session(args.model, device=args.device)  # once: the users file is read by its user column
    users, where = list(args.user), "--user"
    if args.users:
        users, where = read_users(args.users, recommender(session)["user"]), str(args.users)
    reads = (args.model, *([args.users] if args.users else []))
    _written(args.out, reads, lambda out: recommend_rows(session, users, out, where))
    return 0


def _evaluate(args) -> int:
    from specc.inference.evaluate import evaluate_file

    _model_path(args.model)
    result = evaluate_file(args.model, args.data, args.split, args.device, delimiter=_delimiter(args.delimiter),
                           arrays=_arrays(args.arrays))
    rows, arrays, notes = result.pop("rows"), result.pop("arrays"), result.pop("notes")
    for note in notes:
        print(f"specc: note: {note}", file=sys.stderr)
    read = f"; arrays {', '.join(arrays.values())}" if arrays else ""
    print(f"{printable(str(args.data))} ({args.split} {'images' if args.data.is_dir() else 'rows'}: {rows}{read})")
    for name, value in result.items():
        print(f"  {name:<12} {value:.6f}")
    return 0


def _inspect(args) -> int:
    from specc.inference.inspect import NamesFile, report

    if args.top < 1 or args.show < 1:
        raise UsageError("--top and --show take a number of at least 1")
    names = None
    if args.names is not None:
        names = NamesFile(args.names, _delimiter(args.names_delimiter, "--names-delimiter"), args.names_encoding,
                          args.names_header)
    elif args.names_delimiter or args.names_header is not None or args.names_encoding != "utf-8":
        raise UsageError("--names-delimiter, --names-encoding and --names-header describe a --names file")
    print(report(args.run, args.column, names, args.top, args.show))
    return 0


def _serve_arguments(c) -> None:
    """specc serve's MODEL and options: kept out of _parser, which would pass 100 lines."""
    c.add_argument("model", type=Path)
    c.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1, this machine "
                   "only; 0.0.0.0 for every interface)")
    c.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: a free one, printed)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--max-batch", type=int, default=4096, metavar="ROWS", help="concurrent requests run together "
                   "up to this many rows (default 4096); a larger request runs alone")
    c.add_argument("--max-wait-ms", type=float, default=2.0, metavar="MS", help="how long a batch waits for "
                   "requests still being read (default 2); with none on the way it runs at once")
    c.add_argument("--max-rows", type=int, default=65536, metavar="ROWS",
                   help="the most rows one request may hold (default 65536; more: 413)")
    c.add_argument("--threads", type=_threads, default=16, metavar="N",
                   help="the server's threads, each reading and answering one request at a time (default 16)")
    c.add_argument("--max-body-mb", type=float, metavar="MB", help="the largest request body, in millions of "
                   "bytes, refused by its Content-Length before it is read (default: what --max-rows rows of the "
                   "model's inputs take in JSON, with room to spare; at most 1000)")
    c.add_argument("--connection-limit", type=int, metavar="N", help="connections open at once, slow ones "
                   "included; more wait in the backlog (default 1000, or what the open-file limit holds)")
    c.add_argument("--channel-timeout", type=int, default=30, metavar="S",
                   help="close a connection silent this many seconds (default 30)")
    c.add_argument("--request-timeout", type=float, default=60.0, metavar="S", help="a request must arrive whole "
                   "within this many seconds of its first byte, trickled or not (default 60; else 408)")


def _serve(args) -> int:
    from specc.inference.serve import serve_command

    return serve_command(args)


def _tune(args) -> int:
    from specc.commands.tune import tune_command

    return tune_command(args)


COMMANDS = {"check": _check, "show": _show, "train": _train, "lr-find": _lr_find, "sweep": _sweep,
            "predict": _predict, "recommend": _recommend, "evaluate": _evaluate, "inspect": _inspect, "serve": _serve, "tune": _tune}


def command() -> int:
    """The `specc` command and `python -m specc`: main on the process's arguments, just before the
    process ends. Everything it made is then set aside from the cyclic collector (gc.freeze): Python's
    finalization would otherwise walk the whole heap, torch and all it imported, in full collections,
    0.75 s at the end of a collab run (bench/startup.py), only to free what the process's end frees
    anyway. Files are closed by then (the commands close what they write), and atexit still runs."""
    import gc

    code = main()
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. User mistakes never show a traceback."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    spec_path = getattr(args, "spec", None)
    try:
        if spec_path is not None and not spec_path.is_file():
            what = "not a regular file" if spec_path.exists() else "no such spec file"
            print(f"specc: error: {spec_path}: {what}", file=sys.stderr)
            return 2
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except DataError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except UsageError as err:
        print(f"specc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `specc predict ... | head`: the reader has gone, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        if err.filename is None:  # not about a path the user named: a bug, whose traceback shows
            raise
        # a path named on the command line (or a file in a folder it names) that the system refuses: a name
        # too long for it, a folder that cannot be entered, no space left, ...
        print(f"specc: error: {printable(str(err.filename))}: {(err.strerror or str(err)).lower()}", file=sys.stderr)
        return 2
