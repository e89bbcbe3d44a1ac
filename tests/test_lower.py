"""Lowering: checked model -> torch.fx GraphModule, against a hand-written module."""

import pytest
import torch
from torch import nn

from helpers import EXAMPLES, ROOT
from specc.model.lower import lower
from specc.model.sized import Sizes, size_model
from specc.training.run import load_spec

COLLAB = ROOT / "specs" / "collab.spec"


@pytest.mark.parametrize("spec_path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_generated_code_is_golden(spec_path):
    # Regenerate with: python tests/regen_code.py (then read the diff)
    from regen_code import generated_code

    assert len(EXAMPLES) >= 7
    golden = ROOT / "tests" / "data" / "golden" / f"{spec_path.stem}.code"
    assert generated_code(spec_path) == golden.read_text()


def test_names_are_the_specs_and_spans_are_kept():
    spec, _ = load_spec(COLLAB)
    gm = lower(size_model(spec.model, Sizes({"user": 10, "item": 12})))
    assert [n for n, _ in gm.named_children()] == ["u", "i", "ub", "ib"]
    nodes = {n.name: n for n in gm.graph.nodes}
    assert {"user", "item", "u", "i", "ub", "ib", "dot", "out"} <= set(nodes)
    path, line, col = nodes["out"].meta["span"]
    assert path.endswith("collab.spec") and COLLAB.read_text().splitlines()[line - 1].strip().startswith("out")


class EmbeddingDotBias(nn.Module):
    """The seed's collab model, written by hand (fastai's EmbeddingDotBias)."""

    def __init__(self, n_users, n_items, n_factors, y_range):
        super().__init__()
        self.u_weight = nn.Embedding(n_users, n_factors)
        self.i_weight = nn.Embedding(n_items, n_factors)
        self.u_bias = nn.Embedding(n_users, 1)
        self.i_bias = nn.Embedding(n_items, 1)
        self.y_range = y_range

    def forward(self, users, items):
        dot = (self.u_weight(users) * self.i_weight(items)).sum(1)
        res = dot + self.u_bias(users)[:, 0] + self.i_bias(items)[:, 0]
        lo, hi = self.y_range
        return torch.sigmoid(res) * (hi - lo) + lo


def test_lowered_model_matches_the_hand_written_one():
    spec, _ = load_spec(COLLAB)
    torch.manual_seed(0)
    gm = lower(size_model(spec.model, Sizes({"user": 30, "item": 50})))
    ref = EmbeddingDotBias(30, 50, 40, (0, 5.5))
    with torch.no_grad():
        for mine, theirs in [("u", "u_weight"), ("i", "i_weight"), ("ub", "u_bias"), ("ib", "i_bias")]:
            # wider weights than the 0.01 init so that the sigmoid is not flat
            getattr(gm, mine).weight.normal_(0, 0.5)
            getattr(ref, theirs).weight.copy_(getattr(gm, mine).weight)
    users = torch.randint(0, 30, (256,))
    items = torch.randint(0, 50, (256,))
    got = gm(users, items)
    assert got.shape == (256, 1)
    torch.testing.assert_close(got[:, 0], ref(users, items), rtol=1e-6, atol=1e-6)
    # and the gradients agree too
    got[:, 0].sum().backward()
    ref(users, items).sum().backward()
    torch.testing.assert_close(gm.u.weight.grad, ref.u_weight.weight.grad, rtol=1e-5, atol=1e-6)


def test_embeddings_start_small():
    spec, _ = load_spec(COLLAB)
    torch.manual_seed(0)
    gm = lower(size_model(spec.model, Sizes({"user": 300, "item": 500})))
    w = gm.u.weight
    assert w.abs().max() <= 0.02 and 0.005 < w.std() < 0.012


def test_a_runtime_error_names_the_spec_line_of_the_value_that_failed():
    from specc.training.metrics import batch_loss

    spec, _ = load_spec(ROOT / "specs" / "mnist_mlp.spec")
    model = lower(size_model(spec.model, Sizes({}, classes=10)))
    line = next(n.span.line for n in spec.model.nodes if n.op.name == "linear")
    loss = batch_loss(spec, model, [])
    wrong = torch.rand(4, 27, 28)  # one pixel row short: the first linear layer cannot take it
    with pytest.raises(RuntimeError, match=rf"mnist_mlp.spec:{line}:\d+: computing 'linear': mat1 and mat2"):
        loss([wrong], torch.zeros(4, dtype=torch.int64))


def test_values_named_as_torch_module_attributes_or_keywords_train_export_and_inspect(tiny, capsys):
    # A spec may name a value anything check accepts; torch's module has `half`, `train`, `graph`...
    # and fx's code cannot write `self.class`: such a value's weights sit under the name with `_`
    # appended, clear of a value the spec itself calls `half_`.
    from specc.commands.cli import main
    from specc.model.lower import attribute_names

    assert attribute_names(["half", "half_", "class", "u", "graph"]) == {
        "half": "half__", "half_": "half_", "class": "class_", "u": "u", "graph": "graph_"}
    spec, tmp = tiny, tiny.parent
    text = spec.read_text().replace("u   = embedding(user, 8)", "half = embedding(user, 8)")
    text = text.replace("i   = embedding(item, 8)", "class = embedding(item, 8)")
    text = text.replace("ub  = embedding(user, 1)", "half_ = embedding(user, 1)")
    text = text.replace("ib  = embedding(item, 1)", "train = embedding(item, 1)")
    spec.write_text(text.replace("dot(u, i) + ub + ib", "dot(half, class) + half_ + train"))
    assert main(["train", str(spec), "--out", str(tmp / "run"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp / "run"), "--column", "user"]) == 0
    assert "factors 'half' (8 wide)" in capsys.readouterr().out
    gm = lower(size_model(load_spec(spec)[0].model, Sizes({"user": 10, "item": 12})))
    assert [n for n, _ in gm.named_children()] == ["half__", "class_", "half_", "train_"]
