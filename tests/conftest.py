"""Shared fixtures: the repository root and small generated ratings sets with specs beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from specc.data import synth

ROOT = Path(__file__).resolve().parent.parent

COLLAB = """\
data {{
    source = csv("{data}")
    inputs = [user: category, item: category]
    target = rating: float
    valid  = random(0.2, seed=1)
    batch  = {batch}
}}
model {{
    u   = embedding(user, 8)
    i   = embedding(item, 8)
    ub  = embedding(user, 1)
    ib  = embedding(item, 1)
    out = dot(u, i) + ub + ib |> sigmoid_range(0, 5.5)
}}
train {{
    loss      = mse
    metrics   = [rmse, mae]
    optimizer = {optimizer}
    {fit}
    seed      = 3
}}
"""


def collab_spec(tmp: Path, *, data="ratings.csv", batch=32, optimizer="adam(betas=(0.9, 0.99), wd=0.01)",
                fit="fit_one_cycle(epochs=3, lr=1e-2)", name="tiny") -> Path:
    path = tmp / f"{name}.spec"
    path.write_text(COLLAB.format(data=data, batch=batch, optimizer=optimizer, fit=fit))
    return path


MNIST = """\
data {{
    source = npz("{data}")
    inputs = [x: float(784) / 255]
    target = y: category
    batch  = {batch}{rows}
}}
model {{
    h   = x |> {body}
    out = h |> linear(classes)
}}
train {{
    loss      = cross_entropy
    optimizer = adam()
    {fit}
}}
"""


def mnist_spec(tmp: Path, *, body="linear(16) |> relu", batch=64, train_rows=None,
               fit="fit_one_cycle(epochs=1, lr=1e-3)", name="mnist") -> Path:
    """A spec over the MNIST sample that ships in specs/data: 784 pixels -> `body` -> classes."""
    path = tmp / f"{name}.spec"
    rows = f"\n    train_rows = {train_rows}" if train_rows is not None else ""
    path.write_text(MNIST.format(data=ROOT / "specs" / "data" / "mnist_sample.npz", batch=batch, rows=rows,
                                 body=body, fit=fit))
    return path


@pytest.fixture(scope="session")
def ratings_dir(tmp_path_factory) -> Path:
    """A small generated ratings set (60 users, 80 items, 3,000 ratings) and item titles."""
    folder = tmp_path_factory.mktemp("ratings")
    user, item, rating, titles = synth.generate(60, 80, 3000, seed=7)
    synth.write(folder / "ratings.csv", user, item, rating)
    synth.write_items(folder / "items.csv", titles)
    return folder


@pytest.fixture
def tiny(ratings_dir, tmp_path) -> Path:
    """A collab spec over the small ratings set, in its own folder."""
    (tmp_path / "ratings.csv").write_bytes((ratings_dir / "ratings.csv").read_bytes())
    return collab_spec(tmp_path)


def prepared_spec(path, sets=()):
    """A spec file read with its --set overrides, its data prepared and its plan made:
    (spec, prepared, plan), what specc.train.train takes."""
    from specc.data.prepare import prepare
    from specc.plan import make_plan
    from specc.run import load_spec

    spec, _ = load_spec(path, list(sets))
    prepared = prepare(spec.data, spec.model.inputs)
    return spec, prepared, make_plan(spec, prepared)
