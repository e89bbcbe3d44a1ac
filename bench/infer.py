"""Inference throughput: the exported model through onnxruntime against torch eager, same model.

Trains specs/collab.spec for one epoch, then times, at batch 1, 64, 4,096 and 65,536 rows, in one
run:
  - onnxruntime on the raw ids (the vocabulary lookups are inside the graph), the CUDA provider
    where a GPU is there (else the CPU provider), two ways: the feed bound to the device once and
    the outputs left there (Session.bind: what torch's side gets), and numpy in, numpy out (IO
    binding on the GPU: Session.run_bound);
  - torch eager on the same weights, fed the vocabulary indices (its lookups done beforehand,
    which favours torch).
Checks that both give the same ratings (1e-4 on the CPU; TF32 tolerance on the GPU).

    python bench/infer.py [--device auto|cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 64, 4096, 65536)


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls, after two warm-ups."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    from specc.data.prepare import prepare
    from specc.infer import Session
    from specc.run import load_spec, train_run
    from specc.train import build_model, pick_device

    device = pick_device(args.device)
    sets = ["train.fit.epochs=1"]
    spec, _ = load_spec("specs/collab.spec", sets)
    run = Path(tempfile.mkdtemp(prefix="specc-infer-"))
    train_run(spec, run, device.type, sets, quiet=True)
    session = Session(run / "model.onnx", device="cuda" if device.type == "cuda" else "cpu")
    prepared = prepare(spec.data, spec.model.inputs)
    model = build_model(spec, prepared)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(run / "model.safetensors"))
    model = model.to(device).eval()
    rng = np.random.default_rng(0)
    n = max(BATCHES)
    rows = rng.integers(0, len(prepared.raw_valid["user"]), n)
    raw = {c: np.asarray([int(v) for v in prepared.raw_valid[c][rows]], dtype=np.int64) for c in ("user", "item")}
    idx = {c: torch.from_numpy(prepared.vocabs[c].lookup(raw[c])).to(device) for c in ("user", "item")}
    run_ort = session.run_bound if session.device == "cuda" else session.run

    print(f"inference on {device.type}: onnxruntime {session.provider} against torch eager; collab model")
    print(f"{'batch':>6}  {'ort resident rows/s':>19}  {'ort from host rows/s':>20}  {'torch rows/s':>12}  "
          f"{'resident/torch':>14}  {'host/torch':>10}  {'max |diff|':>10}")
    table = []
    for batch in BATCHES:
        feed = {c: raw[c][:batch] for c in raw}
        args_t = [idx["user"][:batch], idx["item"][:batch]]
        resident = session.bind(feed)  # inputs and outputs on the session's device, as torch's are

        def torch_call():
            with torch.no_grad():
                out = model(*args_t)[:, 0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        repeats = 200 if batch <= 64 else 30
        t_resident = timed(resident.run, repeats)
        t_host = timed(lambda: run_ort(feed), repeats)
        t_torch = timed(torch_call, repeats)
        resident.run()
        want = torch_call().cpu().numpy()
        diff = max(float(np.max(np.abs(got["rating"] - want))) for got in (resident.outputs(), run_ort(feed)))
        row = {"batch": batch, "ort_resident_rows_per_s": batch / t_resident, "ort_rows_per_s": batch / t_host,
               "torch_rows_per_s": batch / t_torch, "ratio_resident_over_torch": t_torch / t_resident,
               "ratio_ort_over_torch": t_torch / t_host, "max_abs_diff": diff}
        table.append(row)
        print(f"{batch:>6}  {row['ort_resident_rows_per_s']:>19,.0f}  {row['ort_rows_per_s']:>20,.0f}  "
              f"{row['torch_rows_per_s']:>12,.0f}  {row['ratio_resident_over_torch']:>14.2f}  "
              f"{row['ratio_ort_over_torch']:>10.2f}  {diff:>10.2e}")
    print("ort resident: the feed bound to the session's device once (Session.bind), outputs left there, as")
    print("  torch's inputs and outputs are; ort from host: numpy in, numpy out (Session.run_bound on the GPU).")
    print("resident/torch, host/torch: onnxruntime's throughput over torch's (above 1: onnxruntime is faster)")
    tolerance = 1e-4 if device.type == "cpu" else 5e-3
    worst = max(r["max_abs_diff"] for r in table)
    print(f"outputs agree within {tolerance:g}: {'yes' if worst <= tolerance else 'NO'} (worst {worst:.2e})")
    if args.json:
        args.json.write_text(json.dumps({"device": device.type, "provider": session.provider, "rows": table},
                                        indent=2) + "\n")
    return 0 if worst <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
