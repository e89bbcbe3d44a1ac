"""The command line: check | show | train | predict | inspect.

Exit codes: 0 success, 1 a spec or data error (diagnostics on stderr), 2 a usage error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specc.diagnostics import DataError, SpecError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors; keep its message short
        self.print_usage(sys.stderr)
        print(f"specc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="specc", description="Compile a model spec into a trained, exported model.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def spec_command(name, help_text):
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("spec", type=Path, help="the .spec file")
        c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec value, e.g. data.batch=128 (repeatable)")
        return c

    c = spec_command("check", "check a spec (and its data) and print a model summary")
    c.add_argument("--no-data", action="store_true", help="check the spec alone, without reading its data")
    c = spec_command("show", "print a compiler stage: the syntax tree, the generated code, the plan, the data")
    c.add_argument("--stage", choices=("ast", "code", "plan", "data"), default="code")
    c.add_argument("--png", type=Path, help="--stage data / plan: where to write the picture "
                   "(default <spec name>_data.png, <spec name>_plan.png)")
    c = spec_command("train", "train a spec and write its run folder")
    c.add_argument("--out", type=Path, help="run folder (default runs/<spec name>)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    c.add_argument("--device-step", action="store_true",
                   help="take each step with the device-resident step, uncaptured (Adam; for checks on the CPU)")
    c.add_argument("--no-graph", action="store_true",
                   help="on a CUDA device, train with the plain loop instead of the CUDA-graph step")
    c.add_argument("--resume", type=Path, metavar="RUN",
                   help="go on from where the run in RUN stopped (Ctrl-C or a crash); writes into RUN")
    c = spec_command("lr-find", "the learning-rate finder: an exponential sweep, a plot and suggestions")
    c.add_argument("--out", type=Path, help="where lr_find.csv and lr_find.png go (default runs/<spec name>)")
    c.add_argument("--start", type=float, default=1e-7)
    c.add_argument("--end", type=float, default=10.0)
    c.add_argument("--steps", type=int, default=100)
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c = spec_command("sweep", "train every combination of --grid values, each in its own run folder")
    c.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="a spec value and the values to try, e.g. model.u.dim=20,40,80 (repeatable)")
    c.add_argument("--out", type=Path, help="where the runs go (default runs/<spec name>-sweep)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c = sub.add_parser("predict", help="predict with an exported model.onnx through onnxruntime")
    c.add_argument("model", type=Path)
    c.add_argument("rows", type=Path, help="CSV with a header naming the model's input columns")
    c.add_argument("--out", type=Path, help="write predictions here (default stdout)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c = sub.add_parser("evaluate", help="the spec's metrics of an exported model on a labelled file")
    c.add_argument("model", type=Path)
    c.add_argument("data", type=Path, help="a labelled CSV, read as the spec read its data")
    c.add_argument("--split", choices=("all", "train", "valid"), default="all",
                   help="all rows, or the spec's training or validation rows (default all)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c = sub.add_parser("inspect", help="learned biases and principal components of a run's embeddings")
    c.add_argument("run", type=Path, help="a run folder of `specc train`")
    c.add_argument("--column", help="which id column's embeddings (default: the last one)")
    c.add_argument("--names", type=Path, help="CSV mapping ids to names (id column first)")
    c.add_argument("--top", type=int, default=1000, help="only the N most frequent ids (default 1000)")
    c.add_argument("--show", type=int, default=10, help="rows shown at each end (default 10)")
    return p


def _check(args) -> int:
    from specc.run import load_spec
    from specc.summary import summary

    spec, warnings = load_spec(args.spec, args.sets)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    print(summary(spec, read_data=not args.no_data))
    return 0


def _show(args) -> int:
    from specc.run import load_spec

    if args.stage == "ast":
        from specc import ast, overrides
        from specc.parse import parse, read_source

        tree, errors = overrides.apply(parse(read_source(args.spec)), args.sets)
        if errors:
            raise SpecError(errors)
        print(ast.dump(tree))
        return 0
    spec, warnings = load_spec(args.spec, args.sets)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    if args.stage == "data":
        from specc.data.preview import preview
        from specc.runfolder import atomic_write

        png_path = args.png or Path(f"{spec.name}_data.png")
        text, png = preview(spec, png_path)
        if png is not None:
            atomic_write(png_path, png)
        print(text)
        return 0
    if args.stage == "code":
        from specc.data.prepare import prepare
        from specc.lower import lower
        from specc.plan import model_sizes

        # The data decides embedding sizes in blocks such as tabular(...) and the procs' constants.
        prepared = prepare(spec.data, spec.model.inputs)
        print(lower(spec.model, model_sizes(spec, prepared), prepared.stats).code.strip("\n"))
    else:
        from specc.data.prepare import prepare
        from specc.plan import describe, make_plan
        from specc.plot import schedule_png
        from specc.runfolder import atomic_write
        from specc.train import simulate_schedules

        prepared = prepare(spec.data, spec.model.inputs)
        plan = make_plan(spec, prepared)
        png_path = args.png or Path(f"{spec.name}_plan.png")
        atomic_write(png_path, schedule_png(plan, simulate_schedules(spec, plan), f"{spec.name}: the plan"))
        print(describe(spec, plan))
        print(f"the learning rate and momentum of every group at every step: {png_path}")
    return 0


def _train(args) -> int:
    from specc.run import load_spec, train_run
    from specc.train import TrainingDiverged

    spec, warnings = load_spec(args.spec, args.sets)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here")
    out = args.resume or args.out or Path("runs") / spec.name
    if args.resume and args.out and args.out != args.resume:
        raise UsageError("--resume RUN writes into RUN; leave out --out")
    from specc.export import ExportError
    from specc.train import Interrupted

    try:
        if args.device_step:
            from specc.fastpath import applies

            if not applies(spec):
                raise UsageError("--device-step needs the Adam optimizer (adam or adamw)")
        train_run(spec, out, args.device, args.sets, quiet=args.quiet, resume=args.resume is not None,
                  device_step=args.device_step, graph=False if args.no_graph or args.device_step else None)
    except Interrupted as stopped:
        sets = "".join(f" --set '{s}'" for s in args.sets)
        print(f"\nspecc: interrupted in epoch {stopped.state.epoch} before step {stopped.state.step}; the "
              f"checkpoint is in {out}/. Go on with: specc train {args.spec}{sets} --resume {out}",
              file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        print(f"specc: training stopped: {err}; the last good checkpoint is in {out}/", file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"specc: export failed: {err}", file=sys.stderr)
        return 1
    return 0


def _lr_find(args) -> int:
    import time

    import torch

    from specc.data.prepare import prepare
    from specc.lrfind import lr_find
    from specc.plan import make_plan
    from specc.run import load_spec, write_lr_find
    from specc.runfolder import RunFolder
    from specc.train import (
        _predict_column, build_model, group_params, loss_fn, make_optimizer, module_groups, pick_device, to_tensors,
    )

    spec, warnings = load_spec(args.spec, args.sets)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    if not (0 < args.start < args.end) or args.steps < 2:
        raise UsageError("lr-find needs 0 < --start < --end and --steps of at least 2")
    folder = RunFolder(args.out or Path("runs") / spec.name)
    folder.prepare()
    prepared = prepare(spec.data, spec.model.inputs)
    plan = make_plan(spec, prepared)
    device = pick_device(args.device)
    started = time.perf_counter()
    model = build_model(spec, prepared).to(device).train()
    owners = module_groups(model)
    stage = plan.stages[0]  # the first stage's frozen groups stay frozen
    groups = [(group_params(model, owners, g.name), 1e-3) for g, lr in zip(plan.groups, stage.lrs) if lr is not None]
    groups = [(ps, lr) for ps, lr in groups if ps]
    params = [p for ps, _ in groups for p in ps]
    optimizer = make_optimizer(spec.train.optimizer, groups)
    tensors = to_tensors(prepared.train, device)
    xs, y = [tensors[c] for c in spec.model.inputs], tensors[spec.data.target.name]
    loss_of = loss_fn(spec)
    generator = torch.Generator(device=device)
    generator.manual_seed(spec.train.seed)

    def step_loss(idx):
        return loss_of(_predict_column(spec, model(*[x[idx] for x in xs])), y[idx], params)

    result = lr_find(model, optimizer, step_loss, prepared.n_train, plan.batch, generator, args.start, args.end,
                     args.steps, device=device)
    seconds = time.perf_counter() - started
    write_lr_find(folder, result, f"{spec.name}: lr-find")
    print(f"lr-find on {spec.name}: {len(result.lrs)} steps from {args.start:g}"
          f"{' (stopped: the loss ran away)' if result.stopped_early else ''} in {seconds:.2f} s")
    for name, lr in result.suggestions.items():
        print(f"  {name:<11} {lr:.3g}")
    print(f"wrote {folder.path}/lr_find.csv and lr_find.png")
    return 0


def _sweep(args) -> int:
    import itertools

    from specc.run import load_spec, train_run

    axes = []
    for item in args.grid:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in _split_values(values)]
        if not sep or not key.strip() or not all(choices):
            raise UsageError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. model.u.dim=20,40")
        axes.append((key.strip(), choices))
    base_spec, _ = load_spec(args.spec, args.sets)
    out = args.out or Path("runs") / f"{base_spec.name}-sweep"
    combos = list(itertools.product(*[[(k, v) for v in vs] for k, vs in axes]))
    specs = []
    for combo in combos:  # check every variant before training any
        sets = list(args.sets) + [f"{k}={v}" for k, v in combo]
        spec, _ = load_spec(args.spec, sets)
        specs.append((combo, sets, spec))
    rows = []
    for k, (combo, sets, spec) in enumerate(specs, start=1):
        name = ",".join(f"{key}={value}" for key, value in combo)
        folder = out / "".join(ch if ch.isalnum() or ch in "=,._-" else "_" for ch in name)
        print(f"[{k}/{len(specs)}] {name}", flush=True)
        result = train_run(spec, folder, args.device, sets, quiet=True)
        last = result.history.records[-1]
        rows.append((name, last.valid_loss, last.metrics, folder))
    metrics = list(base_spec.train.metrics)
    rows.sort(key=lambda r: r[1])
    width = max(len(r[0]) for r in rows)
    print(f"\n{'variant':<{width}}  {'valid_loss':>10}  " + "  ".join(f"{m:>10}" for m in metrics))
    for name, loss, values, folder in rows:
        print(f"{name:<{width}}  {loss:>10.6f}  " + "  ".join(f"{values[m]:>10.6f}" for m in metrics))
    print(f"\nbest first; the runs are in {out}/")
    return 0


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


def _predict(args) -> int:
    from specc.infer import predict_file

    if not args.model.is_file():
        raise UsageError(f"{args.model}: no such model file")
    if args.out:
        import io

        from specc.runfolder import atomic_write

        buf = io.StringIO()
        predict_file(args.model, args.rows, buf, device=args.device)
        atomic_write(args.out, buf.getvalue().encode("utf-8"))
    else:
        predict_file(args.model, args.rows, sys.stdout, device=args.device)
    return 0


def _evaluate(args) -> int:
    from specc.evaluate import evaluate_file

    if not args.model.is_file():
        raise UsageError(f"{args.model}: no such model file")
    result = evaluate_file(args.model, args.data, args.split, args.device)
    rows = result.pop("rows")
    unseen = result.pop("unseen_classes", 0)
    print(f"{args.data} ({args.split} rows: {rows})")
    for name, value in result.items():
        print(f"  {name:<12} {value:.6f}")
    if unseen:
        print(f"  ({unseen} rows have a class the model never saw in training; they count as wrong)")
    return 0


def _inspect(args) -> int:
    from specc.inspect import report

    print(report(args.run, args.column, args.names, args.top, args.show))
    return 0


COMMANDS = {"check": _check, "show": _show, "train": _train, "lr-find": _lr_find, "sweep": _sweep,
            "predict": _predict, "evaluate": _evaluate, "inspect": _inspect}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. User mistakes never show a traceback."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    spec_path = getattr(args, "spec", None)
    if spec_path is not None and not spec_path.is_file():
        print(f"specc: error: {spec_path}: no such spec file", file=sys.stderr)
        return 2
    try:
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
