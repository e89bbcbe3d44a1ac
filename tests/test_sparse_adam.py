"""`sparse_adam`: lazy Adam for embedding tables. Its dense update is torch's AdamW bit for bit; its
sparse one moves only the rows a batch looked up (hand-computed first step; untouched rows and their
moments stand still); a spec trains, stops and resumes with it, and is refused where it cannot go."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import StopAt, collab_spec, copy_ratings, prepared_spec, roundtrip

from specc.language.summary import describe
from specc.training.loop import Interrupted, build_model, train
from specc.training.optim import LazyAdam
from specc.training.options import RunOptions
from specc.training.run import load_spec, train_run


def test_a_dense_gradient_takes_adamw_s_update_bit_for_bit():
    torch.manual_seed(0)
    mine, theirs = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5, 3))
    with torch.no_grad():
        theirs.copy_(mine)
    a = LazyAdam([mine], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    b = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    for _ in range(5):
        g = torch.randn(5, 3)
        mine.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert torch.equal(mine, theirs)


def test_a_sparse_gradient_moves_only_the_rows_looked_up():
    torch.manual_seed(1)
    table = torch.nn.Embedding(6, 2, sparse=True)
    before = table.weight.detach().clone()
    lr, wd, (b1, b2), eps = 0.1, 0.5, (0.9, 0.99), 1e-8
    opt = LazyAdam(table.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    table(torch.tensor([1, 4, 4])).sum().backward()  # row 1's gradient is 1, row 4's is 2 (looked up twice)
    assert table.weight.grad.is_sparse
    opt.step()
    w, state = table.weight.detach(), opt.state[table.weight]
    for row in (0, 2, 3, 5):  # untouched: no update, no weight decay, no moments
        assert torch.equal(w[row], before[row]) and not state["exp_avg"][row].any()
    for row, g in ((1, 1.0), (4, 2.0)):
        # step 1 by hand: m = (1-b1) g, v = (1-b2) g^2; p = p (1 - lr wd) - lr (m / (1-b1)) / (sqrt(v / (1-b2)) + eps)
        want = before[row] * (1 - lr * wd) - lr * g / (math.sqrt(g * g) + eps)
        assert torch.allclose(w[row], want, atol=1e-7, rtol=0)
        assert torch.allclose(state["exp_avg"][row], torch.full((2,), (1 - b1) * g))
    m4 = state["exp_avg"][4].clone()
    opt.zero_grad()
    table(torch.tensor([1])).sum().backward()
    opt.step()
    assert torch.equal(state["exp_avg"][4], m4)  # lazy: row 4's moments did not decay (adam's would)


def test_a_spec_trains_with_sparse_adam(ratings_dir, tmp_path):
    copy_ratings(ratings_dir, tmp_path)
    path = collab_spec(tmp_path, optimizer="sparse_adam(betas=(0.9, 0.99), wd=0.01)")
    spec, prepared, plan = prepared_spec(path)
    assert "sparse Adam (lazy" in describe(spec, plan)
    model = build_model(spec, prepared)
    assert all(m.sparse for m in model.modules() if isinstance(m, torch.nn.Embedding))
    result = train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True))
    records = result.history.records
    assert records[-1].valid_loss < records[0].valid_loss and records[-1].metrics["rmse"] < 1.2
    assert result.parity < 1e-5  # the export knows no sparse flag: the tables are tables
    dense, _ = load_spec(collab_spec(tmp_path, name="dense"))
    other = train_run(dense, tmp_path / "dense", RunOptions("cpu", quiet=True))
    assert other.history.records[-1].valid_loss != records[-1].valid_loss  # another optimizer, another model


def test_sparse_adam_stops_and_resumes_to_the_same_weights(ratings_dir, tmp_path):
    copy_ratings(ratings_dir, tmp_path)
    spec, prepared, plan = prepared_spec(collab_spec(tmp_path, optimizer="sparse_adam(wd=0.01)"))
    whole, _ = train(spec, prepared, plan, RunOptions("cpu"))
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu"), stop=StopAt(100))
    resumed, _ = train(spec, prepared, plan, RunOptions("cpu"), resume=roundtrip(stopped.value.state, tmp_path))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_sparse_adam_is_refused_in_data_parallel_training(ratings_dir, tmp_path, monkeypatch, capsys):
    from specc.commands.cli import main

    copy_ratings(ratings_dir, tmp_path)
    path = collab_spec(tmp_path, optimizer="sparse_adam()")
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["train", str(path), "--out", str(tmp_path / "never")]) == 2
    assert "sparse_adam does not take part in data-parallel training" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
