"""Regenerate the golden diagnostics: tests/data/errors/<name>.txt for every <name>.spec.

Each .txt holds exactly what `specc check --no-data tests/data/errors/<name>.spec` prints on
stderr when run from the repository root (`specc check`, with the data read, for a spec whose
first line starts with "# with data"). Run it from anywhere:

    python tests/regen_errors.py            # rewrite every golden file
    python tests/regen_errors.py --check    # only report which golden files would change

Then read the diffs: a golden file is a claim that the message is right.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from glob import glob
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ERRORS = "tests/data/errors"


def check_argv(rel_path: str) -> list[str]:
    """`check --no-data`; `check` with the data read for a spec whose first line says "# with data"
    (errors that only the data's size can tell, such as a batch of one row for batchnorm)."""
    with open(ROOT / rel_path, encoding="utf-8", errors="replace") as f:
        with_data = f.readline().startswith("# with data")
    return ["check", rel_path] if with_data else ["check", "--no-data", rel_path]


def render(rel_path: str) -> tuple[int, str]:
    """Exit code and stderr of `specc check --no-data rel_path`, run from the repository root."""
    from specc.commands.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(check_argv(rel_path))
    return code, err.getvalue()


def main(argv: list[str]) -> int:
    check_only = "--check" in argv
    os.chdir(ROOT)
    specs = sorted(glob(f"{ERRORS}/*.spec"))
    if not specs:
        print(f"no specs in {ERRORS}", file=sys.stderr)
        return 1
    changed = 0
    for rel in specs:
        code, text = render(rel)
        if code != 1:
            print(f"{rel}: exit code {code}, expected 1", file=sys.stderr)
        golden = Path(rel).with_suffix(".txt")
        old = None
        if golden.exists():  # newline="": compare line endings exactly (one spec has CR-only lines)
            with open(golden, encoding="utf-8", newline="") as f:
                old = f.read()
        if old != text:
            changed += 1
            print(f"{'would change' if check_only else 'wrote'} {golden}")
            if not check_only:
                golden.write_text(text, encoding="utf-8", newline="")
    print(f"{len(specs)} specs, {changed} golden file(s) {'out of date' if check_only else 'rewritten'}")
    return 1 if check_only and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
