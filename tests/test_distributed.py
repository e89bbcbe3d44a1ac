"""Data-parallel training on real torch.distributed process groups: gloo on this CPU, 2 processes
started by torchrun on loopback (127.0.0.1, GLOO_SOCKET_IFNAME=lo), each run bounded in time.

The oracles: the two ranks' weights against each other (bitwise); a single-process reference
written here that averages the two half-batch gradients as the all-reduce does (bitwise); an
ordinary single-process run (1e-6, and metrics.csv to its 6 digits); a plain run against
torchrun with one process (bitwise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file

from specc.diagnostics import UsageError
from specc.distributed import ONE, SliceDropout, World, from_env, slice_dropout

LIMIT = 120  # seconds any one launch may take: a hung collective fails the test, never the suite

SPEC = """\
data {
    source = csv("ratings.csv")
    inputs = [user: category, item: category]
    target = rating: float
    valid  = random(0.2, seed=1)
    batch  = 32
}
model {
    u   = embedding(user, 8)
    i   = embedding(item, 8)
    h   = concat(u, i) |> linear(16) |> relu |> dropout(0.25)
    out = h |> linear(1) |> sigmoid_range(0, 5.5)
}
train {
    loss      = mse
    metrics   = [rmse]
    optimizer = adam(betas=(0.9, 0.99), wd=0.01)
    fit_one_cycle(epochs=4, lr=1e-2)
    seed      = 3
}
"""
# 2,000 ratings: 1,600 training rows, 50 batches of 32 an epoch, 200 steps in all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra) -> dict:
    """The environment of a launch: loopback only, one thread, a short collective timeout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "SPECC_DIST_TIMEOUT": "30",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), **extra})
    return env


def torchrun(n: int, *args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *args]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The spec and its ratings (a rank's rating is a user's taste times an item's, plus noise)."""
    path = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(5)
    users, items = rng.integers(1, 61, 2000), rng.integers(1, 41, 2000)
    taste, kind = rng.normal(size=61), rng.normal(size=41)
    rating = np.clip(np.round(3 + taste[users] * kind[items] + rng.normal(0, 0.5, 2000)), 1, 5)
    lines = ["user,item,rating"] + [f"{u},{i},{int(r)}" for u, i, r in zip(users, items, rating)]
    (path / "ratings.csv").write_text("\n".join(lines) + "\n")
    (path / "ddp.spec").write_text(SPEC)
    # lr-find and early stopping: decisions rank 0 takes for all
    (path / "ddp_find.spec").write_text(SPEC.replace("fit_one_cycle(epochs=4, lr=1e-2)", """fit_one_cycle(epochs=6, lr=find)
    early_stop(monitor=valid_loss, patience=1, keep_best=true)"""))
    return path


def worker(folder: Path, out: str, weights: Path, n: int = 2, resume: bool = False) -> subprocess.CompletedProcess:
    """tests/ddp_worker.py under torchrun: specc's pipeline per rank, each rank's weights saved."""
    weights.mkdir(exist_ok=True)
    cmd = torchrun(n, str(ROOT / "tests" / "ddp_worker.py"), "ddp.spec", out, str(weights),
                   *(["--resume"] if resume else []), cwd=folder)
    return subprocess.run(cmd, cwd=folder, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)


@pytest.fixture(scope="module")
def two(folder) -> Path:
    """The spec trained by 2 processes: run folder `two/`, the ranks' weights in `two_w/`."""
    done = worker(folder, "two", folder / "two_w")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def plain_run(folder: Path, out: str):
    from specc.run import load_spec, train_run

    spec, _ = load_spec(folder / "ddp.spec")
    return train_run(spec, folder / out, "cpu", quiet=True, threads=1)


def test_both_ranks_end_with_the_same_weights(two):
    w0, w1 = load_file(two / "two_w" / "rank0.safetensors"), load_file(two / "two_w" / "rank1.safetensors")
    assert w0.keys() == w1.keys() and len(w0) >= 6
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


def reference(folder: Path) -> dict:
    """One process, written out here: each global batch split in two halves, each half's gradient
    taken with the dropout rows a rank takes, the two averaged as (g0 + g1) / 2, as gloo's sum of
    two and the division by 2 make them."""
    from helpers import prepared_spec

    from specc.metrics import batch_loss
    from specc.optim import make_scheduler
    from specc.steps import setup_stage
    from specc.train import batch_order, build_model, torch_threads, training_batches

    spec, prepared, plan = prepared_spec(folder / "ddp.spec")
    cpu = torch.device("cpu")
    with torch_threads(1):
        model = build_model(spec, prepared)
        slice_dropout(model, (0, 2))
        model.train()
        drops = [m for m in model.modules() if isinstance(m, SliceDropout)]
        batches, generator = training_batches(spec, prepared, plan, cpu), batch_order(spec, cpu)
        (stage,) = plan.stages
        setup = setup_stage(spec, model, plan, stage)
        scheduler = make_scheduler(stage.fit, spec.train.optimizer, setup.optimizer, batches.steps * stage.epochs)
        loss, half = batch_loss(spec, model, setup.params), batches.size // 2
        for _ in range(stage.epochs):
            perm = torch.randperm(batches.rows, generator=generator)
            for s in range(batches.steps):
                idx, rng, grads = perm[s * batches.size:(s + 1) * batches.size], torch.get_rng_state(), []
                for r in (0, 1):
                    torch.set_rng_state(rng)  # each rank draws the whole batch's dropout mask
                    for m in drops:
                        m.part = (r, 2)
                    rows = idx[r * half:(r + 1) * half]
                    setup.optimizer.zero_grad(set_to_none=True)
                    loss([x[rows] for x in batches.xs], batches.y[rows]).backward()
                    grads.append([p.grad.clone() for p in setup.params])
                for p, g0, g1 in zip(setup.params, *grads):
                    p.grad = (g0 + g1) / 2
                setup.optimizer.step()
                scheduler.step()
    return model.state_dict()


def test_two_processes_equal_the_half_batch_reference_bitwise(two):
    ranks = load_file(two / "two_w" / "rank0.safetensors")
    ref = reference(two)
    assert ranks.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ranks[k], ref[k]), (k, float((ranks[k] - ref[k]).abs().max()))


def test_two_processes_match_an_ordinary_run(two):
    one = plain_run(two, "one")
    w2, w1 = load_file(two / "two" / "model.safetensors"), load_file(one.folder / "model.safetensors")
    worst = max(float((w2[k] - w1[k]).abs().max()) for k in w1)
    assert worst <= 1e-6
    assert any(not torch.equal(w2[k], w1[k]) for k in w1)  # a mean of two means, rounded otherwise
    m2, m1 = (np.genfromtxt(f / "metrics.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
              for f in (two / "two", one.folder))
    for column in ("train_loss", "valid_loss", "rmse"):
        assert [f"{v:.6g}" for v in m2[column]] == [f"{v:.6g}" for v in m1[column]], column
    run = json.loads((two / "two" / "run.json").read_text())
    assert (run["world_size"], run["backend"], run["loop"], run["status"]) == (2, "gloo", "plain", "complete")
    assert json.loads((one.folder / "run.json").read_text())["world_size"] == 1


def test_the_device_step_all_reduces_as_the_plain_loop_does(two):
    """`--device-step` (the CUDA graph's step, uncaptured, torch's AdamW) under 2 processes: the
    same sync inside it, so the plain 2-process run's weights bit for bit."""
    cmd = torchrun(2, "-m", "specc", "train", "ddp.spec", "--out", "devstep", "--device-step", "--quiet", cwd=two)
    done = subprocess.run(cmd, cwd=two, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    dev, plain = (load_file(two / f / "model.safetensors") for f in ("devstep", "two"))
    assert all(torch.equal(dev[k], plain[k]) for k in plain)
    assert json.loads((two / "devstep" / "run.json").read_text())["loop"] == "device-step"


def test_the_flat_update_of_the_captured_step_all_reduces_too(two):
    """The device step with FlatAdam (what a CUDA graph captures, the all-reduce inside it), run
    uncaptured on the CPU by 2 processes: the ranks agree bit for bit, and the run is within 1e-6
    of the same step in one process."""
    from specc.run import load_spec

    (two / "flat_w").mkdir(exist_ok=True)
    cmd = torchrun(2, str(ROOT / "tests" / "ddp_worker.py"), "ddp.spec", "flat", str(two / "flat_w"), "--flat",
                   cwd=two)
    done = subprocess.run(cmd, cwd=two, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    w0, w1 = (load_file(two / "flat_w" / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    from specc.run import train_run

    spec, _ = load_spec(two / "ddp.spec")
    one = train_run(spec, two / "flat_one", "cpu", quiet=True, threads=1, device_step="flat").model.state_dict()
    assert max(float((w0[k] - one[k]).abs().max()) for k in one) <= 1e-6


def test_torchrun_with_one_process_is_a_plain_run(folder):
    cmd = torchrun(1, "-m", "specc", "train", "ddp.spec", "--out", "single", "--quiet", cwd=folder)
    done = subprocess.run(cmd, cwd=folder, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = plain_run(folder, "plain")
    w_run, w_plain = load_file(folder / "single" / "model.safetensors"), load_file(plain.folder / "model.safetensors")
    assert w_run.keys() == w_plain.keys()
    assert all(torch.equal(w_run[k], w_plain[k]) for k in w_plain)
    assert json.loads((folder / "single" / "run.json").read_text())["backend"] is None


def test_rank_1_writes_nothing_and_prints_nothing(folder, tmp_path):
    """Each rank under tests/audit_run.py's audit hook: rank 1 opens no file for writing, with a
    spec whose rate lr-find picks and whose stage stops early (both decided once, for all ranks)."""
    logs, temp = tmp_path / "logs", tmp_path / "temp"
    temp.mkdir()
    cmd = torchrun(2, "--log-dir", str(logs), "--redirects", "3", str(ROOT / "tests" / "audit_run.py"),
                   "train", "ddp_find.spec", "--out", "audited", cwd=folder)
    done = subprocess.run(cmd, cwd=folder, env=launch_env(TMPDIR=str(temp)), capture_output=True, text=True,
                          timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    err = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    events = {rank: json.loads(text.strip().splitlines()[-1]) for rank, text in out.items()}
    assert events[0]["code"] == events[1]["code"] == 0
    run = str(folder / "audited")
    assert any(p.startswith(run) for p in events[0]["write"])  # rank 0 wrote the run folder
    # Python's tempfile.gettempdir() probes the temporary folder with a file it deletes at once
    # (torch._dynamo's import asks for the folder): not a file of the run
    probes = [p for p in events[1]["write"] if Path(p).parent == temp and not Path(p).exists()]
    assert len(probes) <= 1
    assert sorted(set(events[1]["write"]) - set(probes)) == [] and events[1]["rename"] == []
    assert events[1]["unpickle"] == [] and events[0]["unpickle"] == []
    assert out[1].strip().splitlines()[:-1] == [] and err[1].strip() == ""  # nothing but the audit's own line
    assert "epoch" in out[0] and "training ddp_find on 2 processes" in out[0] and "lr-find suggests" in out[0]
    assert (folder / "audited" / "lr_find.json").is_file()


def children(pid: int) -> dict[int, int]:
    """The rank of each child process of `pid` (torchrun's workers), from /proc."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = [e[5:] for e in env if e.startswith(b"RANK=")]
        if ppid == pid and rank:
            ranks[int(rank[0])] = int(entry.name)
    return ranks


def wait_for(predicate, what: str, limit: float = LIMIT) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigterm_to_one_rank_stops_both_and_resume_equals_an_uninterrupted_run(two):
    """A scheduler's SIGTERM to rank 1 alone: both ranks stop before the same step (the decision
    rides on the step's all-reduce), rank 0 writes the checkpoint; resumed by 2 processes it ends
    on the uninterrupted run's weights bit for bit, and resumed by 1 process within 1e-6."""
    folder = two
    cmd = torchrun(2, str(ROOT / "tests" / "ddp_worker.py"), "ddp.spec", "stopped", str(folder / "stopped_w"),
                   cwd=folder)
    (folder / "stopped_w").mkdir(exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=folder, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: (folder / "stopped" / "metrics.csv").exists(), "the first epoch")
        ranks = children(proc.pid)
        os.kill(ranks[1], signal.SIGTERM)
        _, err = proc.communicate(timeout=LIMIT)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert json.loads((folder / "stopped" / "run.json").read_text())["status"] == "interrupted", err[-2000:]
    assert not (folder / "stopped_w" / "rank0.safetensors").exists()  # neither rank finished
    shutil.copytree(folder / "stopped", folder / "stopped_one")

    done = worker(folder, "stopped", folder / "stopped_w", resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    final, straight = (load_file(folder / f / "model.safetensors") for f in ("stopped", "two"))
    assert all(torch.equal(final[k], straight[k]) for k in straight)

    # the same checkpoint resumed by one process: the same batches, so within 1e-6
    from specc.run import load_spec, train_run

    spec, _ = load_spec(folder / "ddp.spec")
    train_run(spec, folder / "stopped_one", "cpu", quiet=True, resume=True, threads=1)
    one = load_file(folder / "stopped_one" / "model.safetensors")
    assert max(float((one[k] - straight[k]).abs().max()) for k in straight) <= 1e-6


def test_a_killed_rank_makes_the_other_exit_with_a_message(folder):
    """Two processes started as torchrun starts them (its environment), without torchrun's agent,
    which would stop the survivor itself: rank 1 is killed; rank 0 must see it and exit non-zero,
    saying so, within the collective timeout."""
    port = free_port()
    env = launch_env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SPECC_DIST_TIMEOUT="20")
    spec = ["-m", "specc", "train", "ddp.spec", "--out", "killed", "--set", "train.fit.epochs=40"]
    procs = [subprocess.Popen([sys.executable, *spec], cwd=folder, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        wait_for(lambda: (folder / "killed" / "metrics.csv").exists(), "the first epoch")
        procs[1].kill()
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, err[-2000:]
    assert "rank 0: averaging the gradients failed: another process of the run has died or stopped answering" in err
    assert "go on with: specc train ddp.spec --set 'train.fit.epochs=40' --resume killed" in err
    assert "Traceback" not in err
    assert waited < 30  # the timeout (20 s) bounds it; a closed connection is seen at once
    run = json.loads((folder / "killed" / "run.json").read_text())
    assert run["status"] == "failed"
    assert (folder / "killed" / "checkpoint.safetensors").is_file()  # --resume goes on from the last epoch


def test_when_rank_0_cannot_start_the_others_stop_too(folder, tmp_path):
    """A folder rank 0 refuses (it holds a file specc did not write): rank 0 says why and exits 2,
    rank 1 stops at once instead of waiting for a run that never starts."""
    (folder / "taken").mkdir(exist_ok=True)
    (folder / "taken" / "notes.txt").write_text("mine\n")
    logs = tmp_path / "logs"
    cmd = torchrun(2, "--log-dir", str(logs), "--redirects", "3", "-m", "specc", "train", "ddp.spec", "--out", "taken",
                   cwd=folder)
    done = subprocess.run(cmd, cwd=folder, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode != 0
    err = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert "holds files specc did not write (notes.txt)" in err[0]
    assert err[1].strip() == "specc: rank 1: stopping: rank 0 could not start the run (its error says why)"
    assert sorted(p.name for p in (folder / "taken").iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- in-process parts


def test_the_launcher_environment():
    assert from_env({}) is ONE
    assert from_env({"WORLD_SIZE": "1", "RANK": "0"}) is ONE
    world = from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (world.rank, world.size, world.part(), world.writes) == (2, 4, (2, 4), False)
    for env, words in [({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected a whole number"),
                       ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
                        "RANK=2: expected a rank from 0 to 1"),
                       ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR and MASTER_PORT not set"),
                       ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1",
                         "SPECC_DIST_TIMEOUT": "-3"}, "SPECC_DIST_TIMEOUT=-3: expected a positive number")]:
        with pytest.raises(UsageError, match=words.replace("(", r"\(")):
            from_env(env)


def test_a_batch_that_does_not_divide_is_refused_with_the_numbers(folder, monkeypatch, capsys):
    from specc.cli import main

    monkeypatch.chdir(folder)
    for k, v in {"WORLD_SIZE": "3", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "ddp.spec", "--out", "never"]) == 2
    err = capsys.readouterr().err
    assert "data.batch = 32 does not divide among 3 processes" in err and "such as 30 or 33" in err
    assert not (folder / "never").exists()


def test_slice_dropout_is_a_rank_s_rows_of_one_process_s_mask():
    x = torch.randn(64, 12)
    torch.manual_seed(9)
    whole = torch.nn.Dropout(0.3)(x)
    torch.manual_seed(9)
    assert torch.equal(SliceDropout(0.3, (0, 1))(x), whole)  # one part: nn.Dropout, bit for bit
    halves = []
    for r in (0, 1):
        torch.manual_seed(9)
        halves.append(SliceDropout(0.3, (r, 2))(x[r * 32:(r + 1) * 32]))
    assert torch.equal(torch.cat(halves), whole)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    slice_dropout(model, (1, 2))
    assert type(model[1]) is SliceDropout and model[1].part == (1, 2)
    slice_dropout(model, None)
    assert type(model[1]) is torch.nn.Dropout and model[1].p == 0.5


def test_world_defaults():
    assert World().writes and not World().parallel and World().part() == (0, 1)
