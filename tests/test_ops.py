"""The op registry's coverage: every op of specc.model.ops has a lowering and an export translation, and
one spec that uses every op (built from each op's own example line) lowers, exports at its
initial weights and runs through onnxruntime as torch does. A missing translation fails here,
not after a training run."""

import numpy as np
import pytest
import torch

from specc.data.prepare import prepare
from specc.export import parity, parity_rows, to_onnx
from specc.export import ops as export_ops
from specc.model import ops
from specc.model.lower import LOWERINGS
from specc.model.sized import sized_model
from specc.training.loop import build_model
from specc.training.run import load_spec

# The context every example may read (see specc/model/ops/layers.py): c, a, img and h; the last lines
# use the arithmetic ops and a 2-d batchnorm, and fill_missing and normalize make the input and missing ops' procs
# (the parity rows hold a missing `a`: an npz file cannot).
COVERAGE = """\
data {{
    source = npz("cover.npz")
    inputs = [c: category, a: float, img: float(1, 4, 4) / 255]
    target = y: float
    procs  = [fill_missing, normalize]
    valid  = random(0.25, seed=1)
    batch  = 16
}}
model {{
    h = flatten(img) |> linear(4)
{examples}
    ar  = (a + 1) * h - h / 2 + (1 - a) + -h
    im  = img |> conv2d(2, 1, bias=false) |> batchnorm |> flatten
    out = concat({values}, ar, im) |> linear(1)
}}
train {{
    loss = mse
    fit(epochs=1, lr=1e-3)
}}
"""


def _examples() -> list[str]:
    return [d.example for d in ops.OPS.values() if d.callable]


def coverage_spec(folder) -> str:
    """Write the coverage spec and its data into `folder`; return the spec's path."""
    rng = np.random.default_rng(0)
    n = 80
    a = rng.normal(40, 10, n).astype(np.float32)
    np.savez(folder / "cover.npz", c=rng.integers(1, 6, n), a=a, img=rng.uniform(0, 255, (n, 1, 4, 4)).astype(np.float32),
             y=rng.normal(0, 1, n).astype(np.float32))
    examples = _examples()
    names = [line.split("=")[0].strip() for line in examples]
    text = COVERAGE.format(examples="\n".join(f"    {line}" for line in examples),
                           values=", ".join(f"flatten({name})" for name in names))
    path = folder / "cover.spec"
    path.write_text(text)
    return path


def test_every_callable_op_has_an_example_and_every_op_a_lowering():
    assert all(_examples()), [d.name for d in ops.OPS.values() if d.callable and not d.example]
    assert set(ops.OPS) - {d.name for d in ops.OPS.values() if d.expand} == set(LOWERINGS)


def test_one_spec_with_every_op_exports_and_matches_torch(tmp_path):
    spec, _ = load_spec(coverage_spec(tmp_path))
    prepared = prepare(spec.data, spec.model.inputs)
    used = {n.op.name for n in spec.model.nodes} | {n.op.name for n in sized_model(spec, prepared).nodes}
    assert used == set(ops.OPS)  # every op, the blocks before they expand, the internal ones too
    model = build_model(spec, prepared).eval()
    proto = to_onnx(spec, model, prepared.vocabs)
    raw = parity_rows(spec, prepared)
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, raw) < 1e-5


def test_a_missing_export_translation_fails_here(tmp_path, monkeypatch):
    spec, _ = load_spec(coverage_spec(tmp_path))
    prepared = prepare(spec.data, spec.model.inputs)
    model = build_model(spec, prepared).eval()
    monkeypatch.delitem(export_ops.FUNCTIONS, torch.tanh)
    with pytest.raises(TypeError, match="no ONNX translation"):
        to_onnx(spec, model, prepared.vocabs)


LEAKY = """\
data {
    source = csv("ratings.csv")
    inputs = [a: float, b: float]
    target = y: float
}
model {
    h   = concat(a, b)
    low = h |> leaky_relu
    out = h |> leaky_relu(0.25) |> linear(1)
}
train {
    loss = mse
    fit(epochs=1, lr=1e-3)
}
"""


def test_leaky_relu_by_hand(tmp_path):
    (tmp_path / "ratings.csv").write_text("a,b,y\n" + "".join(f"{k - 5},{2 * k - 7},{k}\n" for k in range(10)))
    path = tmp_path / "leaky.spec"
    path.write_text(LEAKY)
    spec, warnings = load_spec(path)
    assert [n.op.slope for n in spec.model.nodes if n.op.name == "leaky_relu"] == [0.01, 0.25]  # default, given
    prepared = prepare(spec.data, spec.model.inputs)
    model = build_model(spec, prepared).eval()
    sub = torch.fx.GraphModule(model, model.graph)
    values = {}
    for node in sub.graph.nodes:  # run it node by node to read the two leaky values
        if node.op == "placeholder":
            values[node.name] = torch.tensor([-4.0, 3.0]) if node.name == "a" else torch.tensor([-2.0, -0.5])
        elif node.op == "call_function":
            args = torch.fx.node.map_arg(node.args, lambda n: values[n.name])
            values[node.name] = node.target(*args, **node.kwargs)
    assert torch.equal(values["low"], torch.tensor([[-0.04, -0.02], [3.0, -0.005]]))
    leaky = [n.name for n in sub.graph.nodes if n.target is torch.nn.functional.leaky_relu]
    assert torch.equal(values[leaky[1]], torch.tensor([[-1.0, -0.5], [3.0, -0.125]]))


def test_leaky_relu_slope_out_of_range(tmp_path):
    path = tmp_path / "bad.spec"
    path.write_text(LEAKY.replace("leaky_relu(0.25)", "leaky_relu(1.5)"))
    from specc.language.diagnostics import SpecError

    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "leaky_relu's slope must be in [0, 1), found 1.5" in str(err.value.diagnostics[0].message)
