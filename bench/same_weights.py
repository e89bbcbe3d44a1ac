"""Check: every example spec trains to bit-identical weights with two versions of specc (issue 26's
acceptance: a speed change leaves the numbers alone).

Each version is a checkout (for the one before a change: `git worktree add /tmp/base <commit>`); every
spec in its specs/ is trained there by `python -m specc train` with that checkout first on PYTHONPATH,
the pretraining specs first (the fine-tuning specs start from their runs), one thread. Then each pair of
model.safetensors is compared tensor by tensor, bit for bit (the files' bytes may differ: safetensors
need not write its header the same way twice). Usage: python bench/same_weights.py BEFORE AFTER
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

FIRST = ("finetune_pretrain", "digits_pretrain")  # the runs the fine-tuning specs' `init ... from` name


def train_all(checkout: Path) -> list[str]:
    """Train every example spec of `checkout` into its runs/ folder; the specs' names."""
    names = sorted(p.stem for p in (checkout / "specs").glob("*.spec"))
    names = [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    for name in names:
        got = subprocess.run([sys.executable, "-m", "specc", "train", f"specs/{name}.spec", "--out", f"runs/{name}",
                              "--threads", "1", "--quiet", "--force"], cwd=checkout, env=env, capture_output=True,
                             text=True)
        if got.returncode:
            raise SystemExit(f"{checkout}: specs/{name}.spec failed:\n{got.stderr}")
        print(f"  {checkout}: {name} trained", file=sys.stderr)
    return names


def main(argv=None) -> int:
    before, after = (Path(a).resolve() for a in (argv or sys.argv[1:]))
    names = train_all(before)
    if train_all(after) != names:
        raise SystemExit("the two checkouts hold different example specs")
    differ = 0
    for name in names:
        a = load_file(str(before / "runs" / name / "model.safetensors"))
        b = load_file(str(after / "runs" / name / "model.safetensors"))
        same = a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
        differ += not same
        print(f"{name:<20} {'bit-identical' if same else 'DIFFERENT'} ({len(a)} tensors)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
