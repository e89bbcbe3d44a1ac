"""Vocabulary lookups in the exported model: the raw-id table against the LabelEncoder, same model.

Trains specs/collab.spec for one epoch and exports it twice: as specc exports it (the ids are dense,
so each embedding is indexed by the raw id through a Clip, and no lookup node is left), and with the
table turned off (ai.onnx.ml LabelEncoder, then the embeddings). Times both through Session.bind
(inputs bound on the session's device, outputs left there) at batch 64, 4,096 and 65,536, the two
models interleaved over 5 rounds, and checks that they give the same ratings bit for bit.

    python bench/lookup.py [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from infer import timed

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (64, 4096, 65536)
ROUNDS, CALLS = 5, 30


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    import specc.export as export
    import specc.export.ids  # noqa: F401 (export.ids below)
    from specc.data.prepare import prepare
    from specc.inference.session import Session
    from specc.model.plan import make_plan
    from specc.training.loop import pick_device, train
    from specc.training.options import RunOptions
    from specc.training.run import load_spec

    device = pick_device(args.device)
    spec, _ = load_spec("specs/collab.spec", ["train.fit.epochs=1"])
    prepared = prepare(spec.data, spec.model.inputs)
    model, _ = train(spec, prepared, make_plan(spec, prepared), RunOptions(str(device)))
    where = "cuda" if device.type == "cuda" else "cpu"
    protos = {"table": export.to_onnx(spec, model, prepared.vocabs)}
    export.ids.DENSE_SPAN_RATIO, export.ids.DENSE_ANYWAY = 0, 0  # no id is dense enough: the LabelEncoder
    protos["encoder"] = export.to_onnx(spec, model, prepared.vocabs)
    table, encoder = (Session(protos[k].SerializeToString(), device=where) for k in ("table", "encoder"))
    ops = {k: sorted({n.op_type for n in proto.graph.node} & {"Clip", "Sub", "LabelEncoder"})
           for k, proto in protos.items()}
    print(f"lookups on {table.provider}: the raw-id table ({', '.join(ops['table'])}) against the "
          f"LabelEncoder ({', '.join(ops['encoder'])}); collab model")
    print(f"{'batch':>6}  {'table rows/s':>13}  {'encoder rows/s':>14}  {'table/encoder':>13}")
    rng = np.random.default_rng(0)
    users, items = (np.array([int(v) for v in prepared.vocabs[c].values]) for c in ("user", "item"))
    same = True
    for batch in BATCHES:
        # known ids, with a few never seen in training (0, and one past the largest)
        feed = {"user": rng.choice(np.append(users, [0, users.max() + 1]), batch).astype(np.int64),
                "item": rng.choice(np.append(items, [0, items.max() + 1]), batch).astype(np.int64)}
        same &= bool(np.array_equal(table.run(feed)["rating"], encoder.run(feed)["rating"]))
        times = {"table": [], "encoder": []}
        for _ in range(ROUNDS):
            for name, session in (("table", table), ("encoder", encoder)):
                times[name].append(timed(session.bind(feed).run, CALLS))
        t_table, t_encoder = statistics.median(times["table"]), statistics.median(times["encoder"])
        print(f"{batch:>6}  {batch / t_table:>13,.0f}  {batch / t_encoder:>14,.0f}  {t_encoder / t_table:>13.2f}")
    print("table/encoder: throughput with the table over throughput with the LabelEncoder (above 1: the table")
    print(f"is faster); medians of {ROUNDS} rounds of {CALLS} calls. Same ratings bit for bit: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
