"""Export: the ONNX model against torch, on raw ids, including ids never seen in training."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from specc.data.prepare import prepare
from specc.export import ExportError, parity, parity_rows, to_onnx
from specc.plan import make_plan
from specc.run import load_spec
from specc.train import pick_device, train
from conftest import collab_spec


def _trained(spec_path, sets=("train.fit.epochs=1",)):
    spec, _ = load_spec(spec_path, list(sets))
    prepared = prepare(spec.data, spec.model.inputs)
    plan = make_plan(spec, prepared)
    model, _ = train(spec, prepared, plan, pick_device("cpu"))
    return spec, prepared, model


def test_onnx_matches_torch_on_raw_ids_with_unseen_ones(tiny):
    spec, prepared, model = _trained(tiny)
    proto = to_onnx(spec, model, prepared.vocabs)
    raw = parity_rows(spec, prepared)
    assert "61" in raw["user"] and "81" in raw["item"]  # one past the largest id of each
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, raw) < 1e-5
    inputs = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert inputs == {"user": onnx.TensorProto.INT64, "item": onnx.TensorProto.INT64}
    assert [o.name for o in proto.graph.output] == ["rating"]
    node_names = {n.name for n in proto.graph.node}
    assert {"u", "i", "ub", "ib", "dot", "out", "rating"} <= node_names


def test_string_ids_go_through_a_string_label_encoder(tmp_path, ratings_dir):
    lines = (ratings_dir / "ratings.csv").read_text().splitlines()
    rows = [lines[0]] + [f"u{r.split(',')[0]},m{r.split(',')[1]},{r.split(',')[2]}" for r in lines[1:]]
    (tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    spec, prepared, model = _trained(collab_spec(tmp_path))
    assert not prepared.vocabs["user"].integer
    proto = to_onnx(spec, model, prepared.vocabs)
    raw = parity_rows(spec, prepared)
    assert "<never seen>" in raw["user"]
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, raw) < 1e-5
    assert {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}["user"] == onnx.TensorProto.STRING


def test_parity_failure_is_loud(tiny):
    spec, prepared, model = _trained(tiny)
    proto = to_onnx(spec, model, prepared.vocabs)
    with torch.no_grad():
        model.ib.weight += 0.1  # torch and the exported graph now disagree
    with pytest.raises(ExportError, match="onnxruntime and torch differ by"):
        parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared))


RUNNER = r"""
import json, sys
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = s.get_modelmeta().custom_metadata_map
out = s.run(None, {"user": np.array([1, 2, 10**9], dtype=np.int64), "item": np.array([3, 4, 5], dtype=np.int64)})
print(json.dumps({"rating": out[0].tolist(), "specc_loaded": any(m.startswith("specc") for m in sys.modules),
                  "target": meta["specc.target"]}))
"""


def test_model_runs_with_onnxruntime_and_numpy_alone(tiny, tmp_path):
    spec, prepared, model = _trained(tiny)
    path = tmp_path / "model.onnx"
    path.write_bytes(to_onnx(spec, model, prepared.vocabs).SerializeToString())
    result = subprocess.run([sys.executable, "-c", RUNNER, str(path)], capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    got = json.loads(result.stdout)
    assert not got["specc_loaded"] and got["target"] == "rating"
    with torch.no_grad():
        idx = [torch.from_numpy(prepared.vocabs[c].lookup(v)) for c, v in (("user", [1, 2, 10**9]),
                                                                           ("item", [3, 4, 5]))]
        want = model(*idx)[:, 0].numpy()
    assert np.allclose(got["rating"], want, atol=1e-5)
    assert all(0 < r < 5.5 for r in got["rating"])


def test_io_binding_gives_the_same_outputs(tiny):
    from specc.infer import Session

    spec, prepared, model = _trained(tiny)
    session = Session(to_onnx(spec, model, prepared.vocabs).SerializeToString(), device="cpu")
    feed = {"user": np.array([1, 2, 10**9], dtype=np.int64), "item": np.array([3, 4, 5], dtype=np.int64)}
    assert session.device == "cpu"
    bound, plain = session.run_bound(feed), session.run(feed)
    assert np.array_equal(bound["rating"], plain["rating"])
    resident = session.bind(feed)  # bound once, run twice: the same buffers, the same outputs
    resident.run()
    resident.run()
    assert np.array_equal(resident.outputs()["rating"], plain["rating"])


def test_inputs_only_lookups_read_stay_on_the_host(tiny):
    """On the GPU, ids go to the LabelEncoder (a CPU kernel) from host memory: no round trip."""
    from specc.infer import _lookup_inputs

    spec, prepared, model = _trained(tiny)
    assert _lookup_inputs(to_onnx(spec, model, prepared.vocabs).SerializeToString()) == {"user", "item"}
