"""Inference throughput: the exported model through onnxruntime against torch eager, same model.

Trains specs/collab.spec for one epoch, then times, at batch 1, 64, 4,096 and 65,536 rows, in one
run:
  - onnxruntime on the raw ids (the vocabulary lookups are inside the graph), the CUDA provider
    where a GPU is there (else the CPU provider), two ways: the feed bound to the device once and
    the outputs left there (Session.bind: what torch's side gets), and numpy in, numpy out (IO
    binding on the GPU: Session.run_bound);
  - torch eager on the same weights, fed the vocabulary indices (its lookups done beforehand,
    which favours torch).
On the GPU, also onnxruntime's own CUDA graph over the resident feed (enable_cuda_graph).
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


def ort_cuda_graph(model: Path, feed: dict[str, np.ndarray], device: str = "cuda"):
    """onnxruntime's own CUDA graph (the CUDA provider's enable_cuda_graph): every input and output
    bound to a fixed device buffer, the first run captured, each later run one graph launch. Returns
    (run, outputs) or (None, why) where it does not apply (a node outside the CUDA provider, say).
    device="cpu" binds the same way on the CPU provider, without a graph: a smoke test of the
    binding on a machine with no GPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    provider = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}) if device == "cuda" else "CPUExecutionProvider"
    try:
        session = ort.InferenceSession(str(model), options, providers=[provider])
        if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            return None, "no CUDA provider"
        binding = session.io_binding()
        buffers = {}  # the graph holds their addresses: they must live as long as it runs
        for name, values in feed.items():
            buffers[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(values), device, 0)
            binding.bind_ortvalue_input(name, buffers[name])
        outputs = [o.name for o in session.get_outputs()]
        rows = len(next(iter(feed.values())))
        for name, plain in zip(outputs, session.run(outputs, feed)):  # shapes and types of the outputs
            assert plain.shape[0] == rows, (name, plain.shape)
            buffers[name] = ort.OrtValue.ortvalue_from_shape_and_type(list(plain.shape), plain.dtype, device, 0)
            binding.bind_ortvalue_output(name, buffers[name])
        session.run_with_iobinding(binding)  # with the graph on: this run captures it
    except Exception as err:  # noqa: BLE001 - a bench column that may not apply; the table says why
        return None, str(err).strip().splitlines()[0][:120]

    def run():
        session.run_with_iobinding(binding)

    return run, lambda: {name: buffers[name].numpy() for name in outputs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    from specc.data.prepare import prepare
    from specc.inference.session import Session
    from specc.training.loop import build_model, pick_device
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    device = pick_device(args.device)
    sets = ["train.fit.epochs=1"]
    spec, _ = load_spec("specs/collab.spec", sets)
    run = Path(tempfile.mkdtemp(prefix="specc-infer-"))
    train_run(spec, run, RunOptions(device.type, sets, quiet=True))
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
          f"{'resident/torch':>14}  {'host/torch':>10}  {'max |diff|':>10}"
          + (f"  {'ort graph rows/s':>16}  {'graph/torch':>11}" if device.type == "cuda" else ""))
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
        results = [resident.outputs(), run_ort(feed)]
        row = {"batch": batch, "ort_resident_rows_per_s": batch / t_resident, "ort_rows_per_s": batch / t_host,
               "torch_rows_per_s": batch / t_torch, "ratio_resident_over_torch": t_torch / t_resident,
               "ratio_ort_over_torch": t_torch / t_host}
        graph = ""
        if device.type == "cuda":
            graph_run, graph_outputs = ort_cuda_graph(run / "model.onnx", feed)
            if graph_run is None:
                print(f"        onnxruntime's CUDA graph does not apply: {graph_outputs}")
            else:
                t_graph = timed(graph_run, repeats)
                graph_run()
                results.append(graph_outputs())
                row.update(ort_graph_rows_per_s=batch / t_graph, ratio_graph_over_torch=t_torch / t_graph)
                graph = f"  {row['ort_graph_rows_per_s']:>16,.0f}  {row['ratio_graph_over_torch']:>11.2f}"
        row["max_abs_diff"] = diff = max(float(np.max(np.abs(got["rating"] - want))) for got in results)
        table.append(row)
        print(f"{batch:>6}  {row['ort_resident_rows_per_s']:>19,.0f}  {row['ort_rows_per_s']:>20,.0f}  "
              f"{row['torch_rows_per_s']:>12,.0f}  {row['ratio_resident_over_torch']:>14.2f}  "
              f"{row['ratio_ort_over_torch']:>10.2f}  {diff:>10.2e}{graph}")
    print("ort resident: the feed bound to the session's device once (Session.bind), outputs left there, as")
    print("  torch's inputs and outputs are; ort from host: numpy in, numpy out (Session.run_bound on the GPU).")
    print("resident/torch, host/torch: onnxruntime's throughput over torch's (above 1: onnxruntime is faster)")
    if device.type == "cuda":
        print("ort graph: resident, with the CUDA provider's enable_cuda_graph (one graph launch per run)")
    tolerance = 1e-4 if device.type == "cpu" else 5e-3
    worst = max(r["max_abs_diff"] for r in table)
    print(f"outputs agree within {tolerance:g}: {'yes' if worst <= tolerance else 'NO'} (worst {worst:.2e})")
    if args.json:
        args.json.write_text(json.dumps({"device": device.type, "provider": session.provider, "rows": table},
                                        indent=2) + "\n")
    return 0 if worst <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
