"""Whatever `check` accepts, `train` runs, or `check` says why not: the classes of spec that once
passed check and then crashed or hung (issue 12, point 10), each against its real failure.
Positioned messages are in the golden corpus (tests/data/errors/number_too_large, data_*)."""

import os
import stat

import pytest
import torch

from helpers import collab_spec, mnist_spec
from specc.commands.cli import main
from specc.language.diagnostics import Diagnostic, SpecError
from specc.model.plan import machine_memory, make_plan, training_bytes
from specc.training.run import load_spec

def _mnist(tmp_path, rows=200, batch=20, epochs=1, pct=0.3):
    return mnist_spec(tmp_path, body="linear(16) |> batchnorm |> relu", batch=batch, train_rows=rows,
                      fit=f"fit_one_cycle(epochs={epochs}, lr=1e-3, pct_start={pct})",
                      name=f"m_{rows}_{batch}_{epochs}_{pct}")


def _one_cycle_runs(total: int, pct: float) -> bool:
    """Does torch's OneCycleLR step through `total` steps with this pct_start? (the oracle)"""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    try:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=total, pct_start=pct)
        for _ in range(total - 1):
            opt.step()
            sched.step()
    except ZeroDivisionError:
        return False
    return True


@pytest.mark.parametrize("steps,pct", [(10, 0.1), (10, 0.2), (4, 0.25), (3, 1 / 3), (7, 0.3), (5, 0.2), (5, 0.3)])
def test_check_refuses_exactly_the_one_cycles_torch_cannot_schedule(tmp_path, steps, pct):
    spec, _ = load_spec(_mnist(tmp_path, rows=20 * steps, batch=20, pct=pct))
    from specc.data.prepare import prepare

    prepared = prepare(spec.data, spec.model.inputs)
    if _one_cycle_runs(steps, pct):
        assert make_plan(spec, prepared).steps_per_epoch == steps
    else:
        with pytest.raises(SpecError, match="warm-up of exactly one step"):
            make_plan(spec, prepared)


def test_a_one_cycle_check_accepts_trains(tmp_path):
    # 10 steps at pct_start 0.2: the neighbour of the refused 0.1 trains to the end
    assert main(["train", str(_mnist(tmp_path, rows=200, batch=20, pct=0.2)), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0


def test_batchnorm_on_one_row_batches_is_refused_and_two_rows_train(tmp_path, tiny, capsys):
    assert main(["check", str(_mnist(tmp_path, rows=50, batch=1))]) == 1
    assert "error[E305]: 'batchnorm' normalises over each batch, but every training batch here has one row" in \
        capsys.readouterr().err
    # one training row and a larger batch: one batch of one row, the same refusal; two rows train
    normed = ["--set", "model.out=dot(u, i) + ub + ib |> batchnorm |> sigmoid_range(0, 5.5)"]
    assert main(["train", str(tiny), *normed, "--set", "data.train_rows=1", "--out", str(tmp_path / "one")]) == 1
    assert "every training batch here has one row (1 training rows, batch 32)" in capsys.readouterr().err
    assert main(["train", str(tiny), *normed, "--set", "data.train_rows=2", "--out", str(tmp_path / "two"),
                 "--quiet"]) == 0


def test_a_model_too_large_for_memory_is_refused_with_the_bytes(tmp_path, capsys):
    path = _mnist(tmp_path)
    available = machine_memory()
    if available is None:
        pytest.skip("this system does not say how much memory it has")
    width = 2 ** 23  # two such layers: about 7e13 parameters, far beyond any machine's memory
    sets = ["--set", f"model.h=x |> linear({width}) |> relu |> linear({width})"]
    assert main(["check", "--no-data", str(path), *sets]) == 1
    err = capsys.readouterr().err
    params = (784 + 1) * width + (width + 1) * width
    needed = training_bytes(params, load_spec(path)[0].train.optimizer)
    assert needed == params * 16  # AdamW: weights, gradients, two moments
    assert f"error[E307]: the model has at least {params:,} parameters: training needs at least " in err
    assert f"'h' alone has {(width + 1) * width:,} parameters" in err


def test_embeddings_count_once_the_data_is_read(tiny, capsys):
    # embedding sizes are known only with the data: check with data refuses, --no-data cannot know
    sets = ["--set", "model.u=embedding(user, 16000000)", "--set", "model.i=embedding(item, 16000000)"]
    assert main(["check", "--no-data", str(tiny), *sets]) == 0
    assert main(["check", str(tiny), *sets]) == 1
    assert "error[E307]: the model has" in capsys.readouterr().err


def test_ten_thousand_duplicate_definitions_are_all_reported_in_linear_time(tmp_path, capsys, monkeypatch):
    path = collab_spec(tmp_path)
    text = path.read_text()
    n = 10_000
    path.write_text(text.replace("    out =", "    u   = embedding(user, 8)\n" * n + "    out =", 1))
    compared = []
    real_eq = Diagnostic.__eq__

    def counting_eq(self, other):
        compared.append(1)
        return real_eq(self, other)

    monkeypatch.setattr(Diagnostic, "__eq__", counting_eq)
    assert main(["check", "--no-data", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("error[E103]: 'u' is defined twice") == n
    assert len(compared) < n  # once: every diagnostic compared with every other (50 million)


def test_show_plan_of_two_billion_epochs_draws_a_shortened_simulation(tiny, tmp_path, capsys):
    png = tmp_path / "plan.png"
    assert main(["show", str(tiny), "--stage", "plan", "--set", "train.fit.epochs=2147483647",
                 "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from specc.data.prepare import prepare
    from specc.training.optim import simulate_schedules

    spec, _ = load_spec(tiny, ["train.fit.epochs=2147483647"])
    plan = make_plan(spec, prepare(spec.data, spec.model.inputs))
    lrs, moms = simulate_schedules(spec, plan, max_steps=2_000)["model"]
    assert len(lrs) == 2_000
    peak = max(lrs)  # the shape of the one cycle is kept: peak at 30% of the way, ends far below
    assert lrs.index(peak) == pytest.approx(0.3 * len(lrs), abs=2)
    assert lrs[0] == pytest.approx(peak / 25) and lrs[-1] < peak / 1e5


def test_a_spec_that_cannot_be_read_is_a_usage_error(tmp_path, capsys):
    folder = tmp_path / "a.spec"
    folder.mkdir()
    assert main(["check", str(folder)]) == 2
    assert capsys.readouterr().err == f"specc: error: {folder}: not a regular file\n"
    fifo = tmp_path / "b.spec"
    os.mkfifo(fifo)
    assert main(["check", str(fifo)]) == 2
    assert capsys.readouterr().err == f"specc: error: {fifo}: not a regular file\n"


def test_a_spec_without_read_permission(tiny, capsys):
    tiny.chmod(0)
    try:
        if os.access(tiny, os.R_OK):
            pytest.skip("running as root: a mode of 000 does not stop reading")
        assert main(["check", str(tiny)]) == 2
        assert capsys.readouterr().err == f"specc: error: {tiny}: cannot read the spec file: Permission denied\n"
    finally:
        tiny.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_init_from_a_damaged_run_is_reported_at_the_init_line_by_check_and_train(tmp_path, capsys):
    pre = _mnist(tmp_path)
    assert main(["train", str(pre), "--out", str(tmp_path / "pre"), "--quiet"]) == 0
    weights = tmp_path / "pre" / "model.safetensors"
    whole = weights.read_bytes()
    spec = tmp_path / "ft.spec"
    spec.write_text(pre.read_text().replace("    h   = x |> linear(16) |> batchnorm |> relu\n",
                                            "    group body { h = x |> linear(16) |> batchnorm |> relu }\n")
                    .replace("    out = h |> linear(classes)\n", "    group head { out = h |> linear(classes) }\n")
                    + 'init body from "pre"\n')
    assert main(["check", str(spec)]) == 0
    capsys.readouterr()
    for cut, reason in [(len(whole) - 100, "runs past the end of the file: it is cut short"),
                        (40, "its header runs past the end of the file"), (3, "it is 3 bytes long")]:
        weights.write_bytes(whole[:cut])
        assert main(["check", str(spec)]) == 1
        err = capsys.readouterr().err
        line = spec.read_text().count("\n")  # the init line, the last
        assert f"{spec}:{line}:1: error[E207]: cannot read {weights}: " in err and reason in err, err
        assert "Traceback" not in err
    # training reads the weights with safetensors itself: a damaged file is the same positioned error
    from specc.language.source import Span
    from specc.language.spec import InitFrom
    from specc.training.loop import build_model

    loaded, _ = load_spec(_mnist(tmp_path, rows=40, batch=20))
    from specc.data.prepare import prepare

    prepared = prepare(loaded.data, loaded.model.inputs)
    model_spec = loaded.__class__(loaded.name, loaded.data, loaded.model, loaded.train, loaded.source,
                                  (InitFrom("model", tmp_path / "pre", Span(loaded.source, 0, 4)),))
    with pytest.raises(SpecError, match=r"error\[E207\]: cannot read .*model.safetensors"):
        build_model(model_spec, prepared)
