"""Plain helpers the tests share (fixtures stay in conftest.py): the repository's paths, spec
templates written into a folder, small data files, a spec trained in-process, a stop on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "specs").glob("*.spec"))
MNIST_SAMPLE = ROOT / "specs" / "data" / "mnist_sample.npz"  # 5,000 training and 1,000 validation digits

# --------------------------------------------------------------------------- spec templates

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
    """A collab spec (8 factors, biases, sigmoid_range) written as `tmp/<name>.spec`, reading `data`."""
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
    path.write_text(MNIST.format(data=MNIST_SAMPLE, batch=batch, rows=rows, body=body, fit=fit))
    return path


# --------------------------------------------------------------------------- data files

def copy_ratings(ratings_dir: Path, folder: Path) -> Path:
    """The small generated ratings set copied into `folder` as ratings.csv, where collab_spec reads it."""
    path = folder / "ratings.csv"
    path.write_bytes((ratings_dir / "ratings.csv").read_bytes())
    return path


def ratings_rows(users: int, items: int) -> str:
    """CSV rows `user,item,rating` for every user and item from 1, rated (user + item) % 5 + 1; no header."""
    return "".join(f"{u},{i},{(u + i) % 5 + 1}\n" for u in range(1, users + 1) for i in range(1, items + 1))


def collab_over(folder: Path, rows: str | bytes) -> Path:
    """A collab spec over `rows` (text or raw bytes, header and all), written to folder/r.csv."""
    csv = folder / "r.csv"
    if isinstance(rows, bytes):
        csv.write_bytes(rows)
    else:
        csv.write_text(rows)
    return collab_spec(folder, data="r.csv")


def mnist_subset(path: Path, n_train: int, n_valid: int) -> Path:
    """The first rows of the shipped MNIST sample, as x_train / y_train / x_valid / y_valid arrays in `path`."""
    with np.load(MNIST_SAMPLE) as d:
        np.savez(path, x_train=d["x_train"][:n_train], y_train=d["y_train"][:n_train],
                 x_valid=d["x_valid"][:n_valid], y_valid=d["y_valid"][:n_valid])
    return path


# --------------------------------------------------------------------------- training in-process

def prepared_spec(path, sets=()):
    """A spec file read with its --set overrides, its data prepared and its plan made:
    (spec, prepared, plan), what specc.training.loop.train takes."""
    from specc.data.prepare import prepare
    from specc.model.plan import make_plan
    from specc.training.run import load_spec

    spec, _ = load_spec(path, list(sets))
    prepared = prepare(spec.data, spec.model.inputs)
    return spec, prepared, make_plan(spec, prepared)


def trained(path, sets=()):
    """A spec file trained on the CPU with its --set overrides: (spec, prepared, model, history)."""
    from specc.training.loop import train
    from specc.training.options import RunOptions

    spec, prepared, plan = prepared_spec(path, sets)
    model, history = train(spec, prepared, plan, RunOptions("cpu"))
    return spec, prepared, model, history


def on_epoch(fn):
    """A listener of specc.training.loop.train that calls fn(model, record, history, state) after
    each epoch (`state`: the TrainState to go on from; it holds the live tensors, so keep a copy)."""
    from specc.training.listeners import Listener

    class OnEpoch(Listener):
        def on_epoch(self, model, record, history, state):
            fn(model, record, history, state)

    return OnEpoch()


class StopAt:
    """Asks to stop before the k-th step from now (what Ctrl-C does, at a chosen moment); train()
    reads `requested` as it reads a StopRequest's."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls > self.k


def stopped_and_resumed(path, k: int):
    """The models of two CPU runs of a spec file: one that never stopped, and one stopped before its k-th step
    (StopAt) and resumed from the state it stopped with."""
    import pytest

    from specc.training.loop import Interrupted, train
    from specc.training.options import RunOptions

    whole = trained(path)[2]
    spec, prepared, plan = prepared_spec(path)
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu"), stop=StopAt(k))
    resumed, _ = train(spec, prepared, plan, RunOptions("cpu"), resume=stopped.value.state)
    return whole, resumed


def roundtrip(state, folder: Path):
    """A training state written to a checkpoint file and read back, as --resume reads it."""
    from specc.training.checkpoint import from_safetensors, to_safetensors

    path = folder / "c.safetensors"
    path.write_bytes(to_safetensors(state, {}))
    return from_safetensors(path)[0]
