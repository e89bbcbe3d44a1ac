"""Data-parallel training on real torch.distributed process groups: gloo on this CPU, 2 processes
started by torchrun on loopback (127.0.0.1, GLOO_SOCKET_IFNAME=lo), each run bounded in time.

The oracles: the two ranks' weights against each other (bitwise, batchnorm's running statistics
included); a single-process reference written here that averages the two half-batch gradients as
the all-reduce does (bitwise); an ordinary single-process run (1e-6, and metrics.csv to its 6
digits); a plain run against torchrun with one process (bitwise); the threads a rank still runs
once it has left the process group (none of the backend's); the exit status and words of each
rank when another dies, stops answering, or was started on something else.

SPECC_DDP_REPEAT=N runs the whole 2-process `specc train` N times in a row (default 3)."""

from __future__ import annotations

import json
import os
import re
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

from specc.language.diagnostics import UsageError
from specc.training.distributed import RowSlices, data_parallel
from specc.training.world import ONE, World, from_env

LIMIT = 120  # seconds any one launch may take: a hung collective fails the test, never the suite
REPEAT = int(os.environ.get("SPECC_DDP_REPEAT", "3"))  # 2-process runs in a row (30 for the soak)

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
    # batchnorm: its running statistics are averaged over the ranks with the gradients
    (path / "ddp_bn.spec").write_text(SPEC.replace("linear(16) |> relu", "linear(16) |> batchnorm |> relu"))
    # the same spec in another folder, beside other ratings (only users 1 to 30)
    (path / "elsewhere").mkdir()
    (path / "elsewhere" / "ddp.spec").write_text(SPEC)
    few = [row for row in lines[1:] if int(row.split(",")[0]) <= 30]
    (path / "elsewhere" / "ratings.csv").write_text("\n".join(lines[:1] + few) + "\n")
    # lr-find and early stopping: decisions rank 0 takes for all
    (path / "ddp_find.spec").write_text(SPEC.replace("fit_one_cycle(epochs=4, lr=1e-2)", """fit_one_cycle(epochs=6, lr=find)
    early_stop(monitor=valid_loss, patience=1, keep_best=true)"""))
    return path


def worker(folder: Path, out: str, weights: Path, n: int = 2, resume: bool = False,
           spec: str = "ddp.spec") -> subprocess.CompletedProcess:
    """tests/ddp_worker.py under torchrun: specc's pipeline per rank, each rank's weights saved."""
    weights.mkdir(exist_ok=True)
    cmd = torchrun(n, str(ROOT / "tests" / "ddp_worker.py"), spec, out, str(weights),
                   *(["--resume"] if resume else []), cwd=folder)
    return subprocess.run(cmd, cwd=folder, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)


@pytest.fixture(scope="module")
def two(folder) -> Path:
    """The spec trained by 2 processes: run folder `two/`, the ranks' weights in `two_w/`."""
    done = worker(folder, "two", folder / "two_w")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def plain_run(folder: Path, out: str):
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    spec, _ = load_spec(folder / "ddp.spec")
    return train_run(spec, folder / out, RunOptions("cpu", quiet=True, threads=1))


def test_both_ranks_end_with_the_same_weights(two):
    w0, w1 = load_file(two / "two_w" / "rank0.safetensors"), load_file(two / "two_w" / "rank1.safetensors")
    assert w0.keys() == w1.keys() and len(w0) >= 6
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the threads from Linux's /proc")
def test_leaving_the_process_group_ends_the_backend_s_threads(two):
    """Once a rank has left the group, none of gloo's threads runs. One that did (the group kept
    alive past destroy_process_group by torch.distributed.nn.functional, imported after the group
    was made) freed its last collective's tensors while the interpreter shut down, and the rank
    aborted ("terminate called without an active exception"; 5 exits of 30 in a reduced
    reproduction): torchrun then stopped rank 0 before it had written model.onnx."""
    for rank in (0, 1):
        names = json.loads((two / "two_w" / f"rank{rank}.threads.json").read_text())
        assert names and not [n for n in names if "gloo" in n], (rank, names)


def test_batchnorm_running_statistics_are_the_same_on_every_rank(folder):
    """Each rank normalises its slice by the slice's own statistics, so each rank's running mean and
    variance would drift apart; averaged over the ranks at every step, they stay equal bit for bit."""
    done = worker(folder, "bn", folder / "bn_w", spec="ddp_bn.spec")
    assert done.returncode == 0, done.stderr[-3000:]
    w0, w1 = (load_file(folder / "bn_w" / f"rank{r}.safetensors") for r in (0, 1))
    stats = [k for k in w0 if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2
    for k in stats:
        assert not torch.equal(w0[k], torch.zeros_like(w0[k]) if k.endswith("mean") else torch.ones_like(w0[k])), k
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


def reference(folder: Path) -> dict:
    """One process, written out here: each global batch split in two halves, each half's gradient
    taken with the dropout rows a rank takes (each drawing the whole batch's mask), the two averaged
    as (g0 + g1) / 2, as gloo's sum of two and the division by 2 make them."""
    from helpers import prepared_spec

    from specc.training.loop import batch_order, build_model, torch_threads, training_batches
    from specc.training.metrics import batch_loss
    from specc.training.optim import make_scheduler
    from specc.training.steps import setup_stage

    spec, prepared, plan = prepared_spec(folder / "ddp.spec")
    cpu = torch.device("cpu")
    with torch_threads(1):
        model = build_model(spec, prepared)
        slices = RowSlices(model, (0, 2))
        model.train()
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
                    slices.part = (r, 2)
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
    from specc.training.run import load_spec

    (two / "flat_w").mkdir(exist_ok=True)
    cmd = torchrun(2, str(ROOT / "tests" / "ddp_worker.py"), "ddp.spec", "flat", str(two / "flat_w"), "--flat",
                   cwd=two)
    done = subprocess.run(cmd, cwd=two, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    w0, w1 = (load_file(two / "flat_w" / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    from specc.training.options import RunOptions
    from specc.training.run import train_run

    spec, _ = load_spec(two / "ddp.spec")
    one = train_run(spec, two / "flat_one", RunOptions("cpu", quiet=True, threads=1, device_step="flat")).model
    one = one.state_dict()
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
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    spec, _ = load_spec(folder / "ddp.spec")
    train_run(spec, folder / "stopped_one", RunOptions("cpu", quiet=True, resume=True, threads=1))
    one = load_file(folder / "stopped_one" / "model.safetensors")
    assert max(float((one[k] - straight[k]).abs().max()) for k in straight) <= 1e-6


def start_ranks(cwds: list[Path], args: list[list[str]], **extra) -> list[subprocess.Popen]:
    """`specc train` as ranks 0 and 1, started as torchrun starts them (its environment) but without
    its agent, which would stop the others itself when one fails: each rank with its own working
    folder and arguments."""
    env = launch_env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), **extra)
    return [subprocess.Popen([sys.executable, "-m", "specc", "train", *args[r]], cwd=cwds[r],
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in (0, 1)]


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_makes_the_other_exit_with_a_message(folder, victim):
    """One rank is killed after the first epoch: the other sees its connection close at once (well
    before the 300 s timeout), and exits with status 1 (not by an abort as it leaves) saying so, and
    not that it waited. Rank 0, when it is the one left, names the checkpoint to go on from."""
    out = f"killed{victim}"
    args = ["ddp.spec", "--out", out, "--set", "train.fit.epochs=40"]
    procs = start_ranks([folder, folder], [args, args], SPECC_DIST_TIMEOUT="300")
    survivor = procs[1 - victim]
    try:
        wait_for(lambda: (folder / out / "metrics.csv").exists(), "the first epoch")
        procs[victim].kill()
        _, err = survivor.communicate(timeout=LIMIT)
    finally:
        for p in procs:
            p.kill()
    assert survivor.returncode == 1, err[-2000:]
    # most often in the next step's all-reduce; the collective it was in is named, whichever it was
    assert re.search(rf"specc: error: rank {1 - victim}: [a-z0-9' ]+ failed: another process of the run has died "
                     r"or left \(", err), err[-2000:]
    assert "within" not in err and "Traceback" not in err and "terminate called" not in err
    assert (folder / out / "checkpoint.safetensors").is_file()  # --resume goes on from the last epoch
    if victim == 1:
        assert f"go on with: specc train ddp.spec --set 'train.fit.epochs=40' --resume {out}" in err
        assert json.loads((folder / out / "run.json").read_text())["status"] == "failed"


def test_a_rank_that_stops_answering_is_given_up_on_after_the_timeout(folder):
    """Rank 1 stopped (SIGSTOP: alive, its connections open, answering nothing): rank 0 gives up
    after SPECC_DIST_TIMEOUT seconds, exits with status 1, and says it waited that long."""
    args = ["ddp.spec", "--out", "paused", "--set", "train.fit.epochs=40"]
    procs = start_ranks([folder, folder], [args, args], SPECC_DIST_TIMEOUT="10")
    try:
        wait_for(lambda: (folder / "paused" / "metrics.csv").exists(), "the first epoch")
        os.kill(procs[1].pid, signal.SIGSTOP)
        _, err = procs[0].communicate(timeout=LIMIT)
    finally:
        for p in procs:
            p.kill()  # a stopped process too
    assert procs[0].returncode == 1, err[-2000:]
    assert re.search(r"specc: error: rank 0: [a-z0-9' ]+ failed: another process of the run did not answer "
                     r"within 10 s \(.*; SPECC_DIST_TIMEOUT sets how long the others wait\)", err), err[-2000:]
    assert "Traceback" not in err


DISAGREEMENTS = {
    # a relative path read in two working folders: rank 1 reads other ratings
    "data": (["ddp.spec"], "elsewhere", "data",
             "rank 1's data differs from rank 0's: training rows: {n1} against 1,600; validation rows: {v1} against "
             "400; user: 30 categories against 60 categories (rank 1 read {folder}/elsewhere/ratings.csv, rank 0 "
             "{folder}/ratings.csv)"),
    # a --set on one rank only: with another batch it would hang, each rank taking other steps
    "batch": (["ddp.spec", "--set", "data.batch=16"], ".", "command line and spec",
              "rank 1's command line differs from rank 0's: --set data.batch=16 against (no options)\n"
              "  rank 1's spec differs from rank 0's: data.batch = 16 against 32"),
    # with another learning rate it would train to "complete", a model no single rate trains
    "lr": (["ddp.spec", "--set", "train.fit.lr=0.02"], ".", "command line and spec",
           "rank 1's command line differs from rank 0's: --set train.fit.lr=0.02 against (no options)\n"
           "  rank 1's spec differs from rank 0's: train.stages[train].fit.lr = 0.02 against 0.01"),
}


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_ranks_that_disagree_stop_at_start_with_one_message(folder, case):
    """Rank 1 started on other data, or with another --set: both ranks stop before training with
    status 1; rank 0 alone says what differs, rank 1 says nothing (rank 0 has said it)."""
    args, where, which, words = DISAGREEMENTS[case]
    out = f"disagree_{case}"
    procs = start_ranks([folder, folder / where], [["ddp.spec", "--out", str(folder / out)],
                                                   [*args, "--out", str(folder / out)]])
    try:
        err = [p.communicate(timeout=LIMIT)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [1, 1], err
    assert err[1] == ""
    rows = (folder / "elsewhere" / "ratings.csv").read_text().splitlines()[1:]
    n1 = len(rows) - round(len(rows) * 0.2)  # random(0.2): a fifth of the rows, rounded, for validation
    expected = words.format(folder=folder, n1=f"{n1:,}", v1=f"{len(rows) - n1:,}")
    assert err[0] == (f"specc: error: the processes of the run differ in their {which}, so none starts training:"
                      f"\n  {expected}\n  start every process with the same command, spec and data\n"), err[0]
    run = json.loads((folder / out / "run.json").read_text())  # a corrected retry replaces it (runfolder)
    assert (run["status"], run["error"]) == ("failed", f"Disagreement: {err[0].splitlines()[0][14:]}")
    assert not (folder / out / "model.onnx").exists()


def test_the_other_ranks_wait_for_rank_0_to_write_the_model(folder):
    """Rank 1 leaves only once rank 0 has written the model, and learns whether it could: with a
    folder where model.onnx is taken by a directory, rank 0 says so (exit 2) and rank 1 exits 1
    pointing to it, instead of 0 (it used to leave as soon as training ended)."""
    args = ["ddp.spec", "--out", "blocked"]
    procs = start_ranks([folder, folder], [args, args])
    try:
        wait_for(lambda: (folder / "blocked" / "run.json").exists(), "the run to begin")
        (folder / "blocked" / "model.onnx").mkdir()
        err = [p.communicate(timeout=LIMIT)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 1], err
    assert err[0].startswith("specc: error: cannot write blocked/model.onnx: is a directory")
    assert err[1] == "specc: rank 1: stopping: rank 0 could not write the model (its error says why)\n"


def test_a_two_process_run_ends_whole_every_time(folder):
    """`torchrun --nproc-per-node 2 -m specc train` REPEAT times in a row: every time both ranks exit
    0 and rank 0 has written model.onnx and marked run.json complete (rank 1 waits for that before
    it leaves, so nothing that happens as it exits can cost the model)."""
    for k in range(REPEAT):
        out = folder / f"again{k}"
        cmd = torchrun(2, "-m", "specc", "train", "ddp.spec", "--out", out.name, "--quiet", "--set",
                       "train.fit.epochs=1", cwd=folder)
        done = subprocess.run(cmd, cwd=folder, env=launch_env(), capture_output=True, text=True, timeout=LIMIT)
        assert done.returncode == 0 and "terminate called" not in done.stderr, (k, done.stderr[-3000:])
        assert json.loads((out / "run.json").read_text())["status"] == "complete", k
        assert (out / "model.onnx").is_file(), k
        shutil.rmtree(out)


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
                       ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected from 1 to 2,147,483,647 processes"),
                       ({"WORLD_SIZE": str(2**31)}, "WORLD_SIZE='2147483648': expected from 1 to 2,147,483,647"),
                       ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
                        "LOCAL_RANK=-1: expected a rank on this machine from 0 to 1")]:
        with pytest.raises(UsageError, match=words.replace("(", r"\(")):
            from_env(env)


LAUNCHED = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


@pytest.mark.parametrize("value", ["-3", "0", "0.5", "inf", "-inf", "nan", "1e300", "1e10", "ten", "10 s", "x" * 50])
def test_a_collective_timeout_outside_its_range_is_a_usage_error(value, monkeypatch, capsys):
    """SPECC_DIST_TIMEOUT: seconds from 1 to 1e9, else exit 2 saying so, before anything starts
    (infinity and 1e300 overflowed torch's timedelta, and NaN compared as no number)."""
    with pytest.raises(UsageError) as refused:
        from_env({**LAUNCHED, "SPECC_DIST_TIMEOUT": value})
    shown = value if len(value) <= 40 else value[:37] + "..."
    words = f"SPECC_DIST_TIMEOUT={shown!r}: expected a number of seconds from 1 to 1e9 (unset: 600)"
    assert str(refused.value) == words
    from specc.commands.cli import main

    for k, v in {**LAUNCHED, "SPECC_DIST_TIMEOUT": value}.items():
        monkeypatch.setenv(k, v)
    assert main(["train", str(ROOT / "specs" / "collab.spec"), "--out", "never"]) == 2
    assert capsys.readouterr().err == f"specc: error: {words}\n"


def test_a_collective_timeout_in_range_is_taken():
    for value, seconds in [("", 600.0), ("1", 1.0), (" 45.5 ", 45.5), ("1e9", 1e9)]:
        assert from_env({**LAUNCHED, "SPECC_DIST_TIMEOUT": value}).timeout == seconds
    assert from_env({"WORLD_SIZE": "1", "SPECC_DIST_TIMEOUT": "45"}) is ONE


def test_a_batch_that_does_not_divide_is_refused_with_the_numbers(folder, monkeypatch, capsys):
    from specc.commands.cli import main

    monkeypatch.chdir(folder)
    for k, v in {"WORLD_SIZE": "3", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "ddp.spec", "--out", "never"]) == 2
    err = capsys.readouterr().err
    assert "data.batch = 32 does not divide among 3 processes" in err and "such as 30 or 33" in err
    assert not (folder / "never").exists()


def test_a_rank_drops_its_rows_of_one_process_s_mask(folder):
    """Under RowSlices each rank's dropout, over its half of a batch, gives its rows of what
    torch's own nn.Dropout gives over the whole batch from the same generator state, gradient
    included; with one part, in evaluation mode, and once the slices are removed, it runs as it is."""
    from helpers import prepared_spec

    from specc.model.lower import declared_modules
    from specc.training.loop import build_model

    spec, prepared, _ = prepared_spec(folder / "ddp.spec")
    model = build_model(spec, prepared).train()
    (drop,) = declared_modules(model, "random_per_row")
    x, grad = torch.randn(64, 16), torch.randn(64, 16)
    torch.manual_seed(9)
    xw = x.clone().requires_grad_()
    whole = torch.nn.Dropout(0.25)(xw)  # a module of its own: one process, the whole batch
    whole.backward(grad)
    slices = RowSlices(model, (0, 2))
    for r in (0, 1):
        slices.part = (r, 2)
        torch.manual_seed(9)
        half = x[r * 32:(r + 1) * 32].clone().requires_grad_()
        out = drop(half)
        out.backward(grad[r * 32:(r + 1) * 32])
        assert torch.equal(out, whole.detach()[r * 32:(r + 1) * 32])
        assert torch.equal(half.grad, xw.grad[r * 32:(r + 1) * 32])
    assert torch.equal(drop.eval()(x[:32]), x[:32])
    slices.part = (0, 1)
    torch.manual_seed(9)
    assert torch.equal(drop.train()(x), whole.detach())
    slices.part = (1, 2)
    slices.remove()
    torch.manual_seed(9)
    assert torch.equal(drop(x), whole.detach())


def test_data_parallel_slices_only_within_its_block_and_only_for_several_processes(folder):
    from helpers import prepared_spec

    from specc.model.lower import declared_modules
    from specc.training.loop import build_model

    spec, prepared, _ = prepared_spec(folder / "ddp.spec")
    model = build_model(spec, prepared).train()
    (drop,) = declared_modules(model, "random_per_row")
    x = torch.randn(32, 16)
    with data_parallel(ONE, model, None) as sync:
        assert sync is None and drop(x).shape == (32, 16) and not drop._forward_pre_hooks
    with data_parallel(World(1, 2), model, None) as sync:
        assert sync.norms == [] and len(drop._forward_pre_hooks) == len(drop._forward_hooks) == 1
        torch.manual_seed(4)
        mine = drop(x)
    torch.manual_seed(4)
    assert torch.equal(mine, torch.nn.Dropout(0.25)(torch.cat([torch.zeros(32, 16), x]))[32:])
    assert not drop._forward_pre_hooks and not drop._forward_hooks


def test_world_defaults():
    assert World().writes and not World().parallel and World().part() == (0, 1)


IMPLICIT_SPEC = """\
data {
    source = csv("ratings.csv")
    inputs = [user: category, item: category]
    target = implicit(user, item, negatives=3)
    valid  = random(0.2, seed=0)
    batch  = 32
}
model {
    out = dot(embedding(user, 8), embedding(item, 8)) + embedding(item, 1)
}
train {
    loss      = bpr
    metrics   = [ndcg(5), recall(5)]
    optimizer = adam(wd=0.1)
    fit_one_cycle(epochs=2, lr=1e-2)
    seed      = 3
}
"""


# A user a row (view = users): embedding_bag's dropout of the user's items draws per row, as dropout does
USERS_SPEC = IMPLICIT_SPEC.replace(
    "inputs = [user: category, item: category]", "inputs = [user: category, item: category, rated: history(user, item)]"
).replace("target = implicit(user, item, negatives=3)", "target = implicit(user, item, view=users)").replace(
    "batch  = 32", "batch  = 8").replace(
    "out = dot(embedding(user, 8), embedding(item, 8)) + embedding(item, 1)",
    "out = embedding_bag(rated, 8, mode=sqrtn, p=0.5) |> tanh |> linear(classes)").replace(
    "loss      = bpr", "loss      = multinomial")


@pytest.mark.parametrize("name, text", [("imp", IMPLICIT_SPEC), ("users", USERS_SPEC)])
def test_implicit_feedback_in_two_processes_draws_and_ranks_as_one_does(folder, name, text):
    """Each step's negatives (or a user's dropped items) are drawn for the whole batch from its place in the
    run, then sliced, as augment's draws are: 2 processes train what 1 does (to the rounding of a mean of
    two means), and rank 0's ranking metrics are the run's."""
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    assert "view=users" in USERS_SPEC and "multinomial" in USERS_SPEC
    (folder / f"ddp_{name}.spec").write_text(text)
    done = worker(folder, f"{name}2", folder / f"{name}2_w", spec=f"ddp_{name}.spec")
    assert done.returncode == 0, done.stderr[-3000:]
    spec, _ = load_spec(folder / f"ddp_{name}.spec")
    one = train_run(spec, folder / f"{name}1", RunOptions("cpu", quiet=True, threads=1, force=True))
    w2, w1 = load_file(folder / f"{name}2" / "model.safetensors"), load_file(one.folder / "model.safetensors")
    assert max(float((w2[k] - w1[k]).abs().max()) for k in w1) <= 1e-6
    m2, m1 = (np.genfromtxt(f / "metrics.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
              for f in (folder / f"{name}2", one.folder))
    for column in ("train_loss", "valid_loss", "ndcg5", "recall5"):  # genfromtxt drops the '@'
        assert [f"{v:.5g}" for v in m2[column]] == [f"{v:.5g}" for v in m1[column]], column
