"""Export: the ONNX model against torch, on raw ids, including ids never seen in training."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import collab_spec, trained

from specc.export import ExportError, parity, parity_rows, to_onnx


def _trained(spec_path, sets=("train.fit.epochs=1",)):
    spec, prepared, model, _ = trained(spec_path, sets)
    return spec, prepared, model


def _collab_with_ids(ratings_dir: Path, folder: Path, user=str, item=str) -> Path:
    """A collab spec in `folder` over the small ratings set with its ids rewritten: user(id) and
    item(id), each given and giving text."""
    lines = (ratings_dir / "ratings.csv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        u, i, rating = line.split(",")
        rows.append(f"{user(u)},{item(i)},{rating}")
    folder.mkdir(exist_ok=True)
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    return collab_spec(folder)


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
    spec, prepared, model = _trained(_collab_with_ids(ratings_dir, tmp_path, lambda u: f"u{u}", lambda i: f"m{i}"))
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
    from specc.inference.session import Session

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


def _lookup_model(vocab):
    """An ONNX model of nothing but the export's lookup of one int64 column."""
    from onnx import TensorProto, helper

    from specc.export.emitter import Emitter
    from specc.export.ids import dense_ids, lookup

    em = Emitter()
    em.node("Identity", [lookup(em, "id", vocab, dense_ids(em, "id", vocab))], "index")
    graph = helper.make_graph(em.nodes, "lookup", [helper.make_tensor_value_info("id", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("index", TensorProto.INT64, ["N"])], em.initializers)
    model = helper.make_model(graph, opset_imports=em.opset_imports())
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("ids, table", [
    (("3", "5", "6", "10"), True),        # holes inside the range
    (("-5", "-1", "0", "2"), True),       # negative ids
    (("7", str(10**6)), False),           # too sparse for a table: the LabelEncoder
    (("1", str(2**62)), False),           # too large for the shift: the LabelEncoder
])
def test_integer_lookup_maps_every_id_and_unseen_ones_to_zero(ids, table):
    from specc.data.prepare import Vocab
    from specc.inference.session import Session

    vocab = Vocab("id", ids, (1,) * len(ids), True)
    model = _lookup_model(vocab)
    assert (model.graph.node[0].op_type != "LabelEncoder") == table
    known = [int(v) for v in ids]
    probes = known + [min(known) - 1, max(known) + 1, 4, -3, 0, 2**62, -2**63, 2**63 - 1, -2**63 + 5]
    feed = np.array(probes, dtype=np.int64)
    want = [k + 1 for k in range(len(known))] + [0 if p not in known else known.index(p) + 1
                                                 for p in probes[len(known):]]  # by hand: index k + 1, else 0
    got = Session(model.SerializeToString(), device="cpu").run({"id": feed})["index"]
    assert got.tolist() == want
    assert got.tolist() == vocab.lookup(feed).tolist()  # and as training looked them up


def test_dense_ids_run_where_the_model_runs_sparse_ones_stay_on_the_host(tiny, tmp_path):
    """Whole-number ids dense enough for a table are looked up by plain ops, so on the GPU they are
    bound on the device; the LabelEncoder (a CPU kernel whatever the provider) reads its ids from
    host memory, with no round trip."""
    from specc.inference.session import lookup_inputs

    spec, prepared, model = _trained(tiny)
    proto = to_onnx(spec, model, prepared.vocabs)
    assert "LabelEncoder" not in {n.op_type for n in proto.graph.node}
    assert [o.domain for o in proto.opset_import] == [""]
    assert lookup_inputs(proto.SerializeToString()) == set()
    # the embeddings are indexed by the raw id itself: no lookup node of their own
    readers = {n.name: list(n.input) for n in proto.graph.node}
    assert readers["u"] == ["u.weight_by_id", "user_clipped"] and readers["ib"] == ["ib.weight_by_id", "item_clipped"]
    assert "user_index" not in readers and "item_index" not in readers

    sparse = _collab_with_ids(tiny.parent, tmp_path / "sparse", user=lambda u: int(u) * 100_000)  # too sparse
    spec, prepared, model = _trained(sparse)
    proto = to_onnx(spec, model, prepared.vocabs)
    assert [n.op_type for n in proto.graph.node].count("LabelEncoder") == 1
    assert lookup_inputs(proto.SerializeToString()) == {"user"}
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5


def test_embedding_too_large_to_index_by_raw_id_looks_the_id_up_first(tiny, tmp_path, monkeypatch):
    """Ids 3 apart: a table of three entries per user, more than twice the user embedding's rows.
    With no extra numbers allowed, the embedding keeps its own rows and the id is looked up."""
    import specc.export.ids

    monkeypatch.setattr(specc.export.ids, "COMPOSE_EXTRA", 0)
    spec, prepared, model = _trained(_collab_with_ids(tiny.parent, tmp_path / "spread", user=lambda u: int(u) * 3))
    proto = to_onnx(spec, model, prepared.vocabs)
    readers = {n.name: list(n.input) for n in proto.graph.node}
    assert readers["user_index"] == ["user_vocabulary", "user_clipped"]
    assert readers["u"] == ["u.weight", "user_index"] and readers["i"] == ["i.weight_by_id", "item_clipped"]
    raw = parity_rows(spec, prepared)
    assert {"4", "2"} <= set(raw["user"])  # a hole between users 3 and 6, and one below the range
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, raw) < 1e-5


def value_names_like(proto: onnx.ModelProto, taken: set[str]) -> list[str]:
    """The names an exported model gives its values (node outputs, initializers, the graph's outputs) that a
    spec could give a value of its own: whole words, none of `taken` (the spec's names and columns), no op's
    name nor fx's name for a value the spec leaves unnamed (dot, embedding_2)."""
    import re

    from specc.model import ops

    names = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.initializer}
    unnamed = re.compile(r"(embedding|concat|div|dot|add|mul|sub|sigmoid|sigmoid_range)(_\d+)?")
    return sorted(n for n in names if re.fullmatch(r"[a-z_][a-z0-9_]*", n) and n not in taken and n not in ops.OPS
                  and not unnamed.fullmatch(n))


def test_a_value_named_as_the_export_names_its_own_values_is_a_value_of_its_own(tiny):
    """A spec may name a value `rating` (the graph's output), `const_0` or `out_scaled`: each is exported under
    a name of its own, and the model still matches torch (ONNX names each value once)."""
    spec, prepared, model = _trained(tiny)
    proto = to_onnx(spec, model, prepared.vocabs)
    names = value_names_like(proto, {"u", "i", "ub", "ib", "out", "user", "item"})
    assert "rating" in names and "const_0" in names and len(names) > 8
    chain = "\n".join(f"    {name} = {before} + 0" for before, name in zip(["u", *names], names))
    tiny.write_text(tiny.read_text().replace("    out = dot(u, i)", f"{chain}\n    out = dot({names[-1]}, i)"))
    spec, prepared, model = _trained(tiny)
    proto = to_onnx(spec, model, prepared.vocabs)
    assert [o.name for o in proto.graph.output] == ["rating"]
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5


@pytest.mark.parametrize("column, value", [("self", "u"), ("class", "self"), ("lambda", "u")])
def test_a_column_or_a_value_may_be_named_self_or_a_python_keyword(tiny, column, value):
    """`self` names the module in the forward's code and `class` is no argument Python takes: such a column
    (UCI's files have a `class`) is the forward's `class_`, such a value `self_`; the ONNX model still takes
    the column by its own name and matches torch."""
    ratings = tiny.parent / "ratings.csv"
    lines = ratings.read_text().splitlines()
    ratings.write_text("\n".join([lines[0].replace("user", column, 1), *lines[1:]]) + "\n")
    text = tiny.read_text().replace("[user:", f"[{column}:").replace("embedding(user,", f"embedding({column},")
    tiny.write_text(text.replace("    u   = ", f"    {value} = ").replace("dot(u, i)", f"dot({value}, i)"))
    spec, prepared, model = _trained(tiny)
    arguments = [n.target for n in model.graph.nodes if n.op == "placeholder"]
    assert arguments == [f"{column}_" if column in ("self", "class", "lambda") else column, "item"]
    assert ("self_" in {n.name for n in model.graph.nodes if n.op != "placeholder"}) == (value == "self")
    proto = to_onnx(spec, model, prepared.vocabs)
    assert [i.name for i in proto.graph.input] == [column, "item"]
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5
