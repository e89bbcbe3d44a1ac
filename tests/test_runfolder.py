"""The run folder as a unit: locked while written, refused when it holds another run or the user's
files (unless --force), marked incomplete when a run does not finish, a full disk as one line;
the files specc reads back from it (lr_find.json, the checkpoint) checked before they are used."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import StopAt, on_epoch, prepared_spec
from safetensors.torch import load_file, save

from specc.commands.cli import main
from specc.language.diagnostics import DataError, UsageError
from specc.training.checkpoint import from_safetensors, to_safetensors
from specc.training.loop import Interrupted, train
from specc.training.options import RunOptions
from specc.training.run import checkpoint_metadata
from specc.training.runfolder import LOCK, RUN_FILES, RunFolder, WriteError, atomic_write, inspect_folder
from specc.training.tracking import EVENTS

ONE = ["--set", "train.fit.epochs=1"]
FIND = ["--set", "train.fit=fit_one_cycle(epochs=1, lr=find)"]


def _train(spec, run, *args):
    return main(["train", str(spec), "--out", str(run), "--quiet", *args])


def _status(run) -> dict:
    return json.loads((run / "run.json").read_text())


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- the lock -------------------------------------------------------------------------------------

def test_the_lock_is_exclusive_and_leaves_nothing_behind(tmp_path):
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    first.acquire()
    assert (tmp_path / "run" / LOCK).read_text() == f"{os.getpid()}\n"
    with pytest.raises(UsageError) as err:
        second.acquire()
    assert str(err.value) == (f"{tmp_path / 'run'} is in use by another specc command (pid {os.getpid()}); "
                              "wait for it to finish, or choose another --out")
    first.release()
    assert not (tmp_path / "run" / LOCK).exists()
    with second.locked():
        pass
    assert not (tmp_path / "run").exists()  # made by the lock and left empty: gone again
    (tmp_path / "mine").mkdir()
    with RunFolder(tmp_path / "mine" / "a" / "b").locked():
        pass
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]  # the user's folder stays, empty or not


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    # a lock is the kernel's flock, which dies with its process; the file it leaves means nothing
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).write_text("999999999\n")
    with RunFolder(tmp_path / "run").locked():
        assert (tmp_path / "run" / LOCK).read_text() == f"{os.getpid()}\n"


def test_a_file_in_the_way_of_the_folder(tmp_path, tiny, capsys):
    (tmp_path / "taken").write_text("x")
    assert _train(tiny, tmp_path / "taken") == 2
    assert capsys.readouterr().err == f"specc: error: cannot write the run folder {tmp_path / 'taken'}: it is a " \
                                      "file, not a folder\n"


# -- refusing, and --force -------------------------------------------------------------------------

def test_a_finished_run_is_refused_and_force_replaces_it_whole(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny, run, *ONE) == 0
    assert _status(run)["status"] == "complete"
    (run / "lr_find.png").write_bytes(b"from an lr-find of this spec with other --set values")
    before = _snapshot(run)
    assert _train(tiny, run, *ONE) == 2
    assert capsys.readouterr().err == (f"specc: error: {run} holds a finished run of 'tiny'; pass --force to replace "
                                       "it, or choose another --out\n")
    assert _snapshot(run) == before  # nothing touched
    assert _train(tiny, run, "--set", "train.fit.epochs=2", "--force") == 0
    assert (run / "metrics.csv").read_text().count("\n") == 3  # header and the new run's two epochs
    assert _status(run)["overrides"] == ["train.fit.epochs=2"] and _status(run)["status"] == "complete"
    # the old run's lr-find picture was of other --set values: it went with the rest
    files = sorted(p.name for p in run.iterdir())
    events = [n for n in files if EVENTS.fullmatch(n)]
    assert len(events) == 1 and sorted(set(files) - set(events)) == sorted(RUN_FILES)  # the new run's event file


def test_the_default_folder_refuses_a_second_run(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(tiny), "--quiet", *ONE]) == 0
    assert main(["train", str(tiny), "--quiet", *ONE]) == 2
    assert capsys.readouterr().err == ("specc: error: runs/tiny holds a finished run of 'tiny'; pass --force to "
                                       "replace it, or choose another --out\n")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]  # no runs/tiny-2


def test_a_folder_of_the_users_files_is_refused_and_force_leaves_them(tiny, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"my own model")
    (mine / "notes.txt").write_text("my notes")
    assert _train(tiny, mine, *ONE) == 2
    assert capsys.readouterr().err == (f"specc: error: {mine} holds files specc did not write (notes.txt, "
                                       "model.onnx); pass --force to train into it anyway (it would overwrite "
                                       "model.onnx), or choose another --out\n")
    assert _snapshot(mine) == {"model.onnx": b"my own model", "notes.txt": b"my notes"}
    assert _train(tiny, mine, *ONE, "--force") == 0
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "model.onnx").read_bytes()[:2] != b"my" and _status(mine)["status"] == "complete"
    # the run is specc's now, the notes still the user's: a third run is refused for the run
    assert _train(tiny, mine, *ONE) == 2
    assert "holds a finished run of 'tiny'" in capsys.readouterr().err


def test_an_empty_folder_or_one_with_lr_find_files_is_trained_into(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _train(tiny, tmp_path / "empty", *ONE) == 0
    found = tmp_path / "found"
    found.mkdir()
    (found / "lr_find.csv").write_text("lr,loss,smoothed_loss\n")
    (found / ".model.onnx.tmp123").write_bytes(b"left by a killed writer")
    assert _train(tiny, found, *ONE) == 0
    assert (found / "lr_find.csv").read_text() == "lr,loss,smoothed_loss\n"  # lr-find's, of this spec
    assert inspect_folder(found).foreign == ()


def test_what_a_folder_holds(tmp_path):
    def holding(**files):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name, data in files.items():
            (folder / name.replace("__", ".")).write_bytes(data)
        return RunFolder(folder), folder

    run, path = holding()
    assert run.contents().status is None and run.refusal() is None
    # an older specc wrote run.json only when the run was done, and without a status
    run, path = holding(run__json=b'{"spec": "old", "overrides": []}', model__onnx=b"")
    assert run.contents().status == "complete"
    assert run.refusal() == f"{path} holds a finished run of 'old'; pass --force to replace it, or choose another --out"
    assert run.refusal(force=True) is None
    run, path = holding(checkpoint__safetensors=b"")  # an older specc's run, killed
    assert run.refusal() == (f"{path} holds a run that did not finish (stopped); go on with it with --resume "
                             f"{path}, replace it with --force, or choose another --out")
    run, path = holding(checkpoint__safetensors=b"", run__json=b"{oops")
    assert run.contents().status == "unknown" and "holds a run whose run.json cannot be read" in run.refusal()
    run, path = holding(run__json=b"[1, 2]")  # not specc's: the user's own run.json
    assert run.contents().status is None and run.contents().foreign == ("run.json",)
    # a killed writer's temporary of a specc file is specc's; a hidden file of the user's is not
    run, path = holding(**{".model.onnx.tmp12": b"", ".notes.tmp1": b""})
    assert run.contents().foreign == (".notes.tmp1",)


def test_every_file_a_run_writes_is_known_and_force_keeps_the_same_specs_rates(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny, run, *FIND) == 0
    got = inspect_folder(run)
    assert got.foreign == () and got.status == "complete"
    assert set(got.lr_find) == {"lr_find.json", "lr_find_train.csv", "lr_find_train.png"}
    found = json.loads((run / "lr_find.json").read_text())
    # the same spec and --set again: the recorded rate is taken, and lr-find does not run
    assert main(["train", str(tiny), "--out", str(run), *FIND, "--force"]) == 0
    assert "lr-find suggests" not in capsys.readouterr().out
    assert json.loads((run / "lr_find.json").read_text()) == found
    # other --set values: the old rate may not fit, so it goes, and lr-find runs again
    assert main(["train", str(tiny), "--out", str(run), *FIND, "--set", "data.batch=64", "--force"]) == 0
    assert "lr-find suggests" in capsys.readouterr().out


def test_two_processes_one_folder(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "specc", "train", str(tiny), "--quiet", "--set", "train.fit.epochs=200"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start(*args):
        proc = subprocess.Popen([*cli, *args], stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / "metrics.csv").exists() and _status(run).get("pid") == proc.pid
                                               and _status(run)["status"] == "running"):
            time.sleep(0.05)
        return proc

    first = start("--out", str(run))
    assert _train(tiny, run, *ONE) == 2  # a second run into the same folder, while the first writes it
    assert capsys.readouterr().err == (f"specc: error: {run} is in use by another specc command (pid {first.pid}); "
                                       "wait for it to finish, or choose another --out\n")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130
    first.stderr.close()
    assert _status(run)["status"] == "interrupted"
    assert _train(tiny, run, *ONE) == 2
    assert capsys.readouterr().err == (f"specc: error: {run} holds a run of 'tiny' that did not finish "
                                       f"(interrupted); go on with it with --resume {run}, replace it with --force, "
                                       "or choose another --out\n")
    (run / "metrics.csv").unlink()  # to see the resumed run reach the end of an epoch
    second = start("--resume", str(run))
    second.kill()  # no Ctrl-C this time: killed, it cannot say so; its run.json still says running
    second.wait(timeout=60)
    second.stderr.close()
    assert _status(run)["status"] == "running" and _status(run)["resumed"] is True
    assert _train(tiny, run, *ONE) == 2  # the dead process's lock is gone with it: only the run is in the way
    assert "that did not finish (stopped); go on with it with --resume" in capsys.readouterr().err
    assert _train(tiny, run, *ONE, "--force") == 0
    assert _status(run)["status"] == "complete"


def test_resume_of_a_finished_run_says_so(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny, run, *ONE) == 0
    before = _snapshot(run)
    assert main(["train", str(tiny), "--resume", str(run), *ONE]) == 0
    assert capsys.readouterr().err == (f"specc: {run} holds a finished run: there is nothing to resume (its model "
                                       f"is {run / 'model.onnx'})\n")
    assert _snapshot(run) == before
    assert main(["train", str(tiny), "--resume", str(run)]) == 2  # another --set: that, first
    assert "the run was started from another spec or other --set values" in capsys.readouterr().err
    assert main(["train", str(tiny), "--resume", str(run), "--force"]) == 2
    assert main(["train", str(tiny), "--resume", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()


# -- a full disk ----------------------------------------------------------------------------------

def test_atomic_write_on_a_full_device_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the good one")
    # the temporary name is where the bytes go first: /dev/full answers every write with ENOSPC
    (tmp_path / f".model.onnx.tmp{os.getpid()}").symlink_to("/dev/full")
    for data in (b"small", b"x" * (1 << 20)):  # written at flush, and written at once
        with pytest.raises(WriteError) as err:
            atomic_write(target, data)
        assert str(err.value) == f"cannot write {target}: no space left on device"
        assert target.read_bytes() == b"the good one"
        (tmp_path / f".model.onnx.tmp{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(WriteError, match="no such file or directory"):
        atomic_write(tmp_path / "no" / "such" / "file", b"x")


def test_a_full_disk_mid_run_is_one_line_and_the_run_goes_on_when_there_is_room(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    blocked = run / f".model.onnx.tmp{os.getpid()}"
    blocked.symlink_to("/dev/full")  # the disk fills up just as the model is exported
    assert _train(tiny, run, *ONE) == 2
    err = capsys.readouterr().err
    assert err == (f"specc: error: cannot write {run / 'model.onnx'}: no space left on device; once it can be "
                   f"written, go on with: specc train {tiny} --set 'train.fit.epochs=1' --resume {run}\n")
    status = _status(run)
    assert status["status"] == "failed" and status["error"].endswith("no space left on device")
    assert not (run / "model.onnx").exists()
    assert not blocked.is_symlink()  # the half-written temporary is removed (and with it, here, the full disk)
    assert main(["train", str(tiny), "--resume", str(run), *ONE]) == 0
    assert "resuming after the last epoch: writing the model" in capsys.readouterr().out
    assert (run / "model.onnx").is_file() and _status(run)["status"] == "complete"


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs `unshare -rm` to mount a small tmpfs as a full disk")
def test_a_really_full_disk(tiny, tmp_path):
    # A 64 KiB tmpfs of its own (in a mount namespace, gone with the shell): the weights, the
    # checkpoint and the metrics fit, the loss plot does not. (Going on once there is room: above.)
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} && cd {tmp_path} && "
              f"{sys.executable} -m specc train tiny.spec --out disk/run --quiet --set train.fit.epochs=1; "
              "echo rc=$?; cat disk/run/run.json")
    got = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert got.stderr == ("specc: error: cannot write disk/run/loss.png: no space left on device; once it can be "
                          "written, go on with: specc train tiny.spec --set 'train.fit.epochs=1' --resume disk/run\n")
    rc, status = got.stdout.split("\n", 1)
    assert rc == "rc=2"
    assert json.loads(status)["status"] == "failed"


# -- what specc reads back: lr_find.json ----------------------------------------------------------

FIX = "delete it, and training finds the rates again"


@pytest.mark.parametrize("text,message", [
    ("{", "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); " + FIX),
    ("\udcff", None),
    ("[0.01]", "expected an object mapping stage names to learning rates, found list; " + FIX),
    ('{"trian": 0.01}', "unknown stage 'trian' (the spec's stages: train); " + FIX),
    ('{"train": -1}', "stage 'train': expected a positive learning rate, found -1; " + FIX),
    ('{"train": 0}', "stage 'train': expected a positive learning rate, found 0; " + FIX),
    ('{"train": NaN}', "stage 'train': expected a positive learning rate, found NaN; " + FIX),
    ('{"train": 1e999}', "stage 'train': expected a positive learning rate, found Infinity; " + FIX),
    ('{"train": "0.01"}', "stage 'train': expected a positive learning rate, found \"0.01\"; " + FIX),
    ('{"train": true}', "stage 'train': expected a positive learning rate, found true; " + FIX),
], ids=["cut", "not-utf8", "list", "unknown-stage", "negative", "zero", "nan", "infinite", "string", "bool"])
def test_a_bad_lr_find_json_is_an_error_naming_it(tiny, tmp_path, capsys, text, message):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "lr_find.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert _train(tiny, run, *FIND) == 1
    err = capsys.readouterr().err
    if message is None:
        assert err.startswith(f"{path}: error[D120]: is not JSON (") and err.endswith(f"); {FIX}\n")
    else:
        assert err == f"{path}: error[D120]: {message}\n"
    assert _status(run)["status"] == "failed"


def test_a_good_lr_find_json_is_the_rate_trained_with(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "lr_find.json").write_text('{"train": 0.02}')
    assert main(["train", str(tiny), "--out", str(run), *FIND]) == 0
    assert "lr-find suggests" not in capsys.readouterr().out
    # one cycle starts at the peak / 25, the first epoch's recorded lr
    assert float((run / "metrics.csv").read_text().splitlines()[1].split(",")[-2]) == pytest.approx(0.02 / 25)


def test_lr_find_json_that_is_a_folder(tiny, tmp_path, capsys):
    (tmp_path / "run" / "lr_find.json").mkdir(parents=True)
    assert _train(tiny, tmp_path / "run", *FIND) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'run' / 'lr_find.json'}: error[D101]: is not a file; {FIX}\n"


# -- what specc reads back: the checkpoint --------------------------------------------------------

@pytest.fixture
def stopped_run(tiny, tmp_path, capsys):
    """A run that trained its epoch, then hit a full disk as it wrote model.onnx: resumable."""
    run = tmp_path / "stopped"
    run.mkdir()
    blocked = run / f".model.onnx.tmp{os.getpid()}"
    blocked.symlink_to("/dev/full")
    assert _train(tiny, run, *ONE) == 2
    assert not blocked.is_symlink()
    capsys.readouterr()
    return run


def _rewrite(path, change):
    """The checkpoint with its tensors and metadata changed by change(tensors, meta, info)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(path)
    original = meta["specc.checkpoint"]
    info = json.loads(original)
    change(tensors, meta, info)
    if meta["specc.checkpoint"] == original:  # not replaced whole: the changed info goes in
        meta["specc.checkpoint"] = json.dumps(info)
    path.write_bytes(save(tensors, metadata=meta))


AGAIN = "; the run cannot go on from it: train it again with --force"
CASES = {
    "cut-short": (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "D108", None),
    "garbage": (lambda p: p.write_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00{not safetensors"), "D108", None),
    "empty": (lambda p: p.write_bytes(b""), "D108", None),
    "not-specc": (lambda p: p.write_bytes(save({"x": torch.zeros(2)})), "D120",
                  "no training state in its metadata: it is not a checkpoint of `specc train`" + AGAIN),
    "state-not-json": (lambda p: _rewrite(p, lambda t, m, i: m.update({"specc.checkpoint": "{"})), "D120",
                       "its training state is not a JSON object" + AGAIN),
    "format": (lambda p: _rewrite(p, lambda t, m, i: i.update(format="specc-checkpoint-0")), "D120",
               "unknown checkpoint format \"specc-checkpoint-0\" (this specc reads 'specc-checkpoint-1')" + AGAIN),
    "no-perm": (lambda p: _rewrite(p, lambda t, m, i: t.pop("perm")), "D120", "tensor 'perm' is missing" + AGAIN),
    "rng-dtype": (lambda p: _rewrite(p, lambda t, m, i: t.update(torch_rng=t["torch_rng"].float())), "D120",
                  "tensor 'torch_rng' is torch.float32 of shape (5056,), not a list of torch.uint8" + AGAIN),
    "step": (lambda p: _rewrite(p, lambda t, m, i: i.update(step=-1)), "D120", "'step' is -1, not a count" + AGAIN),
    "nan-lr": (lambda p: _rewrite(p, lambda t, m, i: i.update(epoch_lrs=[float("nan")])), "D120",
               "'epoch_lrs' is not a list of finite learning rates" + AGAIN),
    "found-lr": (lambda p: _rewrite(p, lambda t, m, i: i.update(found_lrs={"train": -1})), "D120",
                 "'found_lrs' does not map stages to positive learning rates" + AGAIN),
    "records": (lambda p: _rewrite(p, lambda t, m, i: i.update(records=[{"epoch": 0}])), "D120",
                "'records' is not a list of epoch records" + AGAIN),
    "no-weights": (lambda p: _rewrite(p, lambda t, m, i: [t.pop(k) for k in list(t) if k.startswith("model.")]),
                   "D120", "it holds no model weights" + AGAIN),
    "missing-weight": (lambda p: _rewrite(p, lambda t, m, i: t.pop("model.ub.weight")), "D120",
                       "its model weights are not this spec's (no 'ub.weight'); the run cannot go on from it"),
    "shape": (lambda p: _rewrite(p, lambda t, m, i: t.update({"model.u.weight": torch.zeros(5, 8)})), "D120",
              "'u.weight' is (5, 8) in its model weights but (61, 8) here (has the data changed since the run "
              "started?); the run cannot go on from it"),
    "stage": (lambda p: _rewrite(p, lambda t, m, i: i.update(stage=5)), "D120",
              "it is at stage 6, but the spec has 1; the run cannot go on from it"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_checkpoint_is_an_error_naming_it(stopped_run, tiny, capsys, case):
    damage, code, message = CASES[case]
    path = stopped_run / "checkpoint.safetensors"
    damage(path)
    assert main(["train", str(tiny), "--resume", str(stopped_run), "--quiet", *ONE]) == 1
    err = capsys.readouterr().err
    if message is None:
        assert err.startswith(f"{path}: error[D108]: is not a readable safetensors file (")
        assert err.endswith("): it is damaged or cut short\n") and err.count("\n") == 1
    else:
        assert err == f"{path}: error[{code}]: {message}\n"


def test_the_undamaged_checkpoint_resumes(stopped_run, tiny):
    assert main(["train", str(tiny), "--resume", str(stopped_run), "--quiet", *ONE]) == 0


def test_a_checkpoint_of_other_data_is_an_error(tiny, tmp_path, capsys):
    # stopped inside its first epoch, so the checkpoint holds that epoch's order of the rows
    spec, prepared, plan = prepared_spec(tiny, ["train.fit.epochs=1"])
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu"), stop=StopAt(5))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(to_safetensors(stopped.value.state, checkpoint_metadata(
        spec, prepared.vocabs, ["train.fit.epochs=1"], 0)))
    with open(tmp_path / "ratings.csv", "a") as f:  # the data grows by 500 rows of known users and items
        lines = (tmp_path / "ratings.csv").read_text().splitlines()[1:501]
        f.write("\n".join(lines) + "\n")
    assert main(["train", str(tiny), "--resume", str(run), "--quiet", *ONE]) == 1
    assert capsys.readouterr().err == (f"{run / 'checkpoint.safetensors'}: error[D120]: its epoch's order is of "
                                       "2400 rows, but the data has 2800 training rows now (has the data changed "
                                       "since the run started?); the run cannot go on from it\n")


def test_from_safetensors_reads_what_to_safetensors_wrote(tiny, tmp_path):
    spec, prepared, plan = prepared_spec(tiny, ["train.fit.epochs=1"])
    states = []
    train(spec, prepared, plan, RunOptions("cpu"), listener=on_epoch(lambda m, r, h, s: states.append(s)))
    path = tmp_path / "c.safetensors"
    path.write_bytes(to_safetensors(states[0], {}))
    state, meta = from_safetensors(path)
    assert (state.stage, state.epoch, state.step) == (1, 0, 0) and state.records == states[0].records
    assert all(torch.equal(state.model[k], v) for k, v in states[0].model.items())
    path.chmod(0)
    if os.geteuid() != 0:  # root reads a file whatever its mode
        with pytest.raises(DataError, match="cannot be read: permission denied"):
            from_safetensors(path)


# -- sweep and lr-find write run folders too ------------------------------------------------------

def test_a_sweep_into_the_same_folder_again(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny), "--grid", "train.fit.lr=1e-3,1e-2", "--out", str(out), *ONE]
    assert main(args) == 0
    before = _snapshot(out / "train.fit.lr=1e-3")
    assert main(args) == 2
    assert capsys.readouterr().err == (f"specc: error: {out / 'train.fit.lr=1e-3'} holds a finished run of 'tiny'; "
                                       "pass --force to replace it, or choose another --out\n")
    assert _snapshot(out / "train.fit.lr=1e-3") == before
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train.fit.lr=1e-2", "train.fit.lr=1e-3"]
    assert main(["sweep", str(tiny), "--grid", "train.fit.lr=1e-3", "--out", str(out / "train.fit.lr=1e-3")]) == 2
    assert "holds a run of its own; a sweep's runs go into a folder of their own" in capsys.readouterr().err


def test_lr_find_writes_beside_a_run_of_its_spec_only(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny, run, *ONE) == 0
    lr_find = ["lr-find", str(tiny), "--out", str(run), "--steps", "20"]
    assert main([*lr_find, *ONE]) == 0
    assert (run / "lr_find.png").is_file() and _status(run)["status"] == "complete"
    assert main(lr_find) == 2
    assert capsys.readouterr().err.endswith(
        f"specc: error: {run} holds a finished run of 'tiny', with another spec or other --set values; pass "
        "--force to write lr_find.csv and lr_find.png beside it anyway, or choose another --out\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(["lr-find", str(tiny), "--out", str(tmp_path / "mine"), "--steps", "20"]) == 2
    assert capsys.readouterr().err.endswith(
        f"specc: error: {tmp_path / 'mine'} holds files specc did not write (notes.txt); pass --force to write "
        "lr_find.csv and lr_find.png there anyway, or choose another --out\n")
    assert main(["lr-find", str(tiny), "--out", str(tmp_path / "mine"), "--steps", "20", "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["lr_find.csv", "lr_find.png", "notes.txt"]


# -- show writes pictures only where it is told ---------------------------------------------------

def test_show_writes_pictures_only_with_png(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pics.npz", x_train=rng.random((40, 16)), y_train=rng.integers(0, 2, 40),
             x_valid=rng.random((10, 16)), y_valid=rng.integers(0, 2, 10))
    spec = tmp_path / "pics.spec"
    spec.write_text('data {\n    source = npz("pics.npz")\n    inputs = [x: float(16)]\n    target = y: category\n'
                    '    batch  = 8\n}\nmodel {\n    out = x |> linear(classes)\n}\ntrain {\n'
                    '    loss = cross_entropy\n    optimizer = adam()\n    fit_one_cycle(epochs=1, lr=1e-2)\n}\n')
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    for stage in ("plan", "data"):
        assert main(["show", str(spec), "--stage", stage]) == 0
    out = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == before  # nothing written into the working folder
    assert "(--png FILE draws the learning rate and momentum of every group at every step)" in out
    for stage in ("plan", "data"):
        assert main(["show", str(spec), "--stage", stage, "--png", str(tmp_path / f"{stage}.png")]) == 0
        assert (tmp_path / f"{stage}.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert f"every group at every step: {tmp_path / 'plan.png'}" in out
    assert f"with their labels is in {tmp_path / 'data.png'}" in out
