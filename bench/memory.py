"""Benchmark: specc's memory estimate (specc.model.plan.memory_need) against the memory one training step
or one validation pass takes on the CPU.

Each case runs in a fresh child process: it builds the model of an example spec (the shipped
sample data), takes one small step to load torch's kernels, then measures the growth of its peak
resident memory (getrusage ru_maxrss against the resident size just before) over one training step
at the batch (forward, backward, AdamW's update) or one validation pass (specc.training.metrics.evaluate),
and prints it beside the estimate of the same part. Usage, from the repository root:

    python bench/memory.py            # every case, about a minute
    python bench/memory.py --json out.json

docs/language.md ("Memory") quotes its figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # spec, batch, phase
    ("specs/mnist_mlp.spec", 4096, "step"),
    ("specs/mnist_cnn.spec", 256, "step"),
    ("specs/mnist_cnn.spec", 1024, "step"),
    ("specs/mnist_cnn.spec", 64, "valid"),
    ("specs/digits_pretrain.spec", 256, "step"),
    ("specs/digits_pretrain.spec", 1024, "step"),
    ("specs/digits_pretrain.spec", 64, "valid"),
    ("specs/collab_nn.spec", 8192, "step"),
    ("specs/adult.spec", 4096, "step"),
]

CHILD = r"""
import gc, json, resource, sys
import torch
from specc.data.prepare import prepare
from specc.model.plan import memory_need
from specc.model.sized import sized_model
from specc.training.loop import build_model, to_tensors
from specc.training.metrics import evaluate, loss_fn, predict_column
from specc.training.run import load_spec

torch.set_num_threads(1)
path, batch, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec, _ = load_spec(path, [f"data.batch={batch}"])
prepared = prepare(spec.data, spec.model.inputs)
model = build_model(spec, prepared)
sized = sized_model(spec, prepared)
step_need = memory_need(sized, spec.train.optimizer, batch, 0, 0).values
valid_need = memory_need(sized, spec.train.optimizer, 1, prepared.n_valid, 0).values
cpu = torch.device("cpu")
train, valid = to_tensors(prepared.train, cpu), to_tensors(prepared.valid, cpu)
xs = [train[c][:batch].clone() for c in spec.model.inputs]
y = train[spec.data.target.name][:batch].clone()
loss = loss_fn(spec)
optimizer = torch.optim.AdamW(model.parameters(), fused=True)


def step(n):
    loss(predict_column(spec, model(*[x[:n] for x in xs])), y[:n], list(model.parameters())).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


step(2)  # kernels, the optimizer's state and the allocator's pools exist before the measured span
gc.collect()
page = resource.getpagesize()
before = int(open("/proc/self/statm").read().split()[1]) * page
if phase == "step":
    step(batch)
else:
    evaluate(spec, model, valid, valid[spec.data.target.name])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"measured": peak - before, "estimate": step_need if phase == "step" else valid_need,
                  "rows": batch if phase == "step" else min(prepared.n_valid, 8192)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    rows = []
    print(f"{'spec':<28} {'phase':<6} {'rows':>6} {'measured MiB':>13} {'estimate MiB':>13} {'ratio':>6}")
    for spec, batch, phase in CASES:
        child = subprocess.run([sys.executable, "-c", CHILD, spec, str(batch), phase], cwd=ROOT,
                               capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"{spec} {phase}: the child failed:\n{child.stderr}")
        out = child.stdout
        found = json.loads(out.strip().splitlines()[-1])
        measured, estimate = found["measured"] / 2**20, found["estimate"] / 2**20
        print(f"{spec:<28} {phase:<6} {found['rows']:>6} {measured:>13.1f} {estimate:>13.1f} "
              f"{estimate / measured:>6.2f}", flush=True)
        rows.append({"spec": spec, "phase": phase, **found})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
