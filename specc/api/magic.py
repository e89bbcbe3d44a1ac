"""The IPython cell magic: `%load_ext specc`, then `%%specc check|train [options]` over a cell that
holds a spec -> the Report or Run, displayed and bound to the variable `--as NAME` names. A mistake
in the spec or its data shows its diagnostics, never a traceback."""

from __future__ import annotations

import argparse
import shlex

CELL = "<cell>"  # how diagnostics name the cell's spec


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        from specc.language.diagnostics import UsageError

        raise UsageError(f"%%specc: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%%specc", add_help=False)
    p.add_argument("command", choices=("check", "train"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--as", dest="target", metavar="NAME", help="bind the Report or Run to this variable")
    p.add_argument("--name", default=None, help="the spec's name (diagnostics, runs/<name>/)")
    p.add_argument("--no-data", action="store_true")
    p.add_argument("--data", metavar="VARIABLE", help="train on this frame of the notebook's variables")
    p.add_argument("--out")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def run_cell(line: str, cell: str, namespace: dict):
    """The magic's work: (the Report or Run, or None after a mistake, which is displayed instead)."""
    from IPython.display import display

    from specc.api.run import train
    from specc.api.spec import check
    from specc.language.diagnostics import DataError, SpecError, UsageError

    try:
        args = _parser().parse_args(shlex.split(line))
        if args.target is not None and not args.target.isidentifier():
            raise UsageError(f"%%specc --as {args.target!r}: expected a variable name")
        name = args.name or CELL
        if args.command == "check":
            result = check(cell, args.sets, name=name, data=not args.no_data)
        else:
            data = None
            if args.data is not None:
                if args.data not in namespace:
                    raise UsageError(f"%%specc --data {args.data}: no such variable")
                data = namespace[args.data]
            result = train(cell, data=data, out=args.out, overrides=args.sets, device=args.device,
                           threads=args.threads, quiet=args.quiet, force=args.force, name=name)
    except (SpecError, DataError) as err:
        display(err)
        return None
    except UsageError as err:
        from IPython.display import HTML

        from specc.api.display import message_html

        display(HTML(message_html(f"specc: error: {err}")))
        return None
    if args.target is not None:
        namespace[args.target] = result
    return result


def register(ipython) -> None:
    """Register %%specc on an IPython shell (load_ipython_extension's work)."""

    def specc(line: str, cell: str):
        return run_cell(line, cell, ipython.user_ns)

    ipython.register_magic_function(specc, magic_kind="cell", magic_name="specc")
