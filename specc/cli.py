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
    c.add_argument("--png", type=Path, help="--stage data: where to write the image grid "
                   "(default <spec name>_data.png)")
    c = spec_command("train", "train a spec and write its run folder")
    c.add_argument("--out", type=Path, help="run folder (default runs/<spec name>)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    c.add_argument("--resume", type=Path, metavar="RUN",
                   help="go on from where the run in RUN stopped (Ctrl-C or a crash); writes into RUN")
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

        prepared = prepare(spec.data, spec.model.inputs)
        print(describe(spec, make_plan(spec, prepared)))
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
        train_run(spec, out, args.device, args.sets, quiet=args.quiet, resume=args.resume is not None)
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


COMMANDS = {"check": _check, "show": _show, "train": _train, "predict": _predict, "evaluate": _evaluate,
            "inspect": _inspect}


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
