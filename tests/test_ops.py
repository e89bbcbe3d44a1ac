"""The op registry's coverage: every op of specc.model.ops has a lowering and an export translation, and
one spec that uses every op (built from each op's own example line) lowers, exports at its
initial weights and runs through onnxruntime as torch does. A missing translation fails here,
not after a training run."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from specc.data.prepare import prepare
from specc.export import parity, parity_rows, to_onnx
from specc.export import ops as export_ops
from specc.export.emitter import Emitter
from specc.language.spec import Node, op
from specc.model import ops
from specc.model.lower import LOWERINGS, HistoryBag, SetBag, lower
from specc.model.ops.base import OpDef, Tensor
from specc.model.sized import sized_model
from specc.training.distributed import data_parallel
from specc.training.loop import build_model
from specc.training.run import load_spec
from specc.training.world import ONE, World

# The context every example may read (see specc/model/ops/layers.py): c, a, img, h and hc (the categories of
# d each row's c has in the training rows); `sb` reads a set column (tags: up to three ids a row, padded with
# -1), so that embedding_bag is covered over a set as over a history; the last lines
# use the arithmetic ops and a 2-d batchnorm, and fill_missing and normalize make the input and missing ops' procs
# (the parity rows hold a missing `a`: an npz file cannot).
COVERAGE = """\
data {{
    source = npz("cover.npz")
    inputs = [c: category, a: float, img: float(1, 4, 4) / 255, d: category, hc: history(c, d), tags: categories]
    target = y: float
    procs  = [fill_missing, normalize]
    valid  = random(0.25, seed=1)
    batch  = 16
}}
model {{
    h = flatten(img) |> linear(4)
{examples}
    sb  = embedding_bag(tags, 3, mode=mean, p=0.25)
    ar  = (a + 1) * h - h / 2 + (1 - a) + -h
    im  = img |> conv2d(2, 1, bias=false) |> batchnorm |> flatten
    out = concat({values}, sb, ar, im) |> linear(1)
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
    tags = rng.integers(1, 7, (n, 3))
    tags[rng.uniform(size=(n, 3)) < 0.3] = -1  # SET_PAD_ID: rows of fewer ids, some of none
    np.savez(folder / "cover.npz", c=rng.integers(1, 6, n), d=rng.integers(1, 9, n), a=a, img=rng.uniform(0, 255, (n, 1, 4, 4)).astype(np.float32),
             y=rng.normal(0, 1, n).astype(np.float32), tags=tags)
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
    assert {type(m) for m in model.modules()} >= {SetBag, HistoryBag}  # embedding_bag over a set and a history
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


# ---------------------------------------------------------------- declared facts, read by every stage


def _coverage(tmp_path):
    """The coverage spec, its data, its sized model and its lowered model."""
    spec, _ = load_spec(coverage_spec(tmp_path))
    prepared = prepare(spec.data, spec.model.inputs)
    return spec, prepared, sized_model(spec, prepared), build_model(spec, prepared)


def _halves(model, module, x, seed: int, parallel: bool = True) -> torch.Tensor:
    """What two ranks give, each running `module` over its half of the batch `x` (from the same
    generator state), inside the step factory's data parallelism (or not), rank 0's rows first."""
    halves, size = [], len(x) // 2
    for rank in (0, 1):
        with data_parallel(World(rank, 2) if parallel else ONE, model, None):
            torch.manual_seed(seed)
            halves.append(module(x[rank * size:(rank + 1) * size]))
    return torch.cat(halves)


def _one_process(module, x, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return module(x)


def test_every_op_that_draws_random_numbers_per_row_is_sliced_under_data_parallelism(tmp_path):
    """Each op declaring OpDef.random_per_row, where the coverage spec uses it (its example, and
    inside the blocks), is sliced by the step factory's data parallelism: the two ranks' halves are
    one process's whole batch, bit for bit; no other module is touched."""
    _, _, sized, model = _coverage(tmp_path)
    random = {name for name, d in ops.OPS.items() if d.random_per_row}
    assert random  # dropout, at least
    made = {n.target: n.meta["op"] for n in model.graph.nodes if n.op == "call_module"}
    assert random <= set(made.values())
    shapes = {n.name: n.shape for n in sized.nodes}
    model.train()
    for k, fnode in enumerate(n for n in model.graph.nodes if n.op == "call_module" and made[n.target] in random):
        module, arg = model.get_submodule(fnode.target), fnode.args[0].name
        # a value's numbers, or an embedding_bag's key column's indices into its history table, or its sets
        if arg in shapes:
            x = torch.randn(8, *shapes[arg])
        elif isinstance(module, HistoryBag):
            x = torch.randint(0, len(module.table), (8,))
        else:
            x = torch.randint(0, len(module.weight), (8, 3))
        assert torch.equal(_halves(model, module, x, seed=k), _one_process(module, x, seed=k)), fnode.name
    with data_parallel(World(1, 2), model, None):
        hooked = {t for t in made if model.get_submodule(t)._forward_pre_hooks}
    assert hooked == {t for t, name in made.items() if name in random}


def test_a_new_op_declaring_random_per_row_is_sliced_with_no_other_change(tmp_path, monkeypatch):
    """A dropout-like op added as a declaration and a lowering, and nothing else (here torch's
    Dropout2d, which drops whole channels of an image): data-parallel training slices it, as the
    issue's `dropout2d` was not when slicing matched `type(module) is nn.Dropout`."""
    _, prepared, sized, _ = _coverage(tmp_path)
    declared = OpDef("channel_dropout", "zeroes whole channels", (Tensor("x"),), random_per_row=True)
    monkeypatch.setitem(ops.OPS, "channel_dropout", declared)
    monkeypatch.setitem(LOWERINGS, "channel_dropout", lambda g, node: g.module(node, torch.nn.Dropout2d(node.op.p)))
    conv = sized.node("cv")
    nodes = list(sized.nodes)
    nodes.insert(nodes.index(conv) + 1, Node("cd", op("channel_dropout", p=0.5), ("cv",), conv.shape, conv.span))
    model = lower(dataclasses.replace(sized, nodes=tuple(nodes)), prepared.stats, tables=prepared.tables).train()
    module, x = model.get_submodule("cd"), torch.randn(8, *conv.shape)
    assert type(module) is torch.nn.Dropout2d
    assert torch.equal(_halves(model, module, x, seed=3), _one_process(module, x, seed=3))
    # without the slicing each rank would draw its own channels: not one process's
    assert not torch.equal(_halves(model, module, x, seed=3, parallel=False), _one_process(module, x, seed=3))


def test_lookups_and_batch_statistics_are_the_declared_ops_modules(tmp_path):
    """The modules the stages treat as lookup tables or as batch statistics are exactly those of
    the ops declaring them: the fast path gathers the lookups' rows itself, the export indexes them
    by raw id, data-parallel training averages the batch statistics' buffers."""
    from specc.export.ids import composes, dense_ids
    from specc.training.distributed import StepSync
    from specc.training.fastpath import gather_rows_graph

    _, prepared, _, model = _coverage(tmp_path)
    made = {n.target: ops.get(n.meta["op"]) for n in model.graph.nodes if n.op == "call_module"}
    lookups = {t for t, d in made.items() if d.lookup}
    assert lookups and {n.target for n in gather_rows_graph(model).graph.nodes if n.op == "call_module"} == (
        set(made) - lookups)
    dense = dense_ids(Emitter(), "c", prepared.vocabs["c"])
    assert {n.target for n in model.graph.nodes if n.op == "call_module" and
            composes(n, model.get_submodule(n.target), dense)} == lookups
    norms = StepSync(World(0, 2), None, model).norms
    assert norms and norms == [model.get_submodule(t) for t, d in made.items() if d.batch_statistics]


# ---------------------------------------------------------------- blocks


def test_every_block_is_declared_once_with_its_own_argument_check():
    """A block (an op with an expansion) is one declaration, with one entry in the checker's
    BLOCKS for its lists and pairs; no op name is declared twice."""
    from specc.language.check.model_block import BLOCKS
    from specc.model.ops import blocks, conv, layers

    declared = [d.name for d in (*layers.OPS, *conv.OPS, *blocks.OPS, *layers.INTERNAL)]
    assert len(declared) == len(set(declared)) == len(ops.OPS)
    expanding = {d.name for d in ops.OPS.values() if d.expand}
    assert expanding == {d.name for d in blocks.OPS} == set(BLOCKS) and all(ops.OPS[b].example for b in expanding)


def test_show_prints_each_block_s_expansion(tmp_path, capsys):
    """`specc show --stage code` prints every block of the coverage spec (each block's own example)
    as the primitives it expands into, each a line of the generated code named after it, and no
    call of the block itself."""
    from specc.commands.cli import main

    spec, _, sized, _ = _coverage(tmp_path)
    blocks = {n.name: n.op.name for n in spec.model.nodes if ops.get(n.op.name).expand}
    assert set(blocks.values()) == {d.name for d in ops.OPS.values() if d.expand}
    assert main(["show", str(tmp_path / "cover.spec"), "--stage", "code"]) == 0
    code = capsys.readouterr().out
    for name, block in blocks.items():
        expansion = [n for n in sized.nodes if sized.origin.get(n.name) == name or n.name == name]
        assert len(expansion) > 2 and expansion[-1].name == name, block
        for node in expansion:
            assert re.search(rf"^    {node.name} = ", code, re.M), (block, node.name)
        assert f"{block}(" not in code
